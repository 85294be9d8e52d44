"""Who made a bundle: an Ed25519 signature over the bundle's digest (issue 20).

The digest (sha256 of manifest.yaml, which hashes every other file) shows corruption; it
does not show who wrote the bundle: anyone can edit the manifest and recompute it. So the
training machine signs the digest with a private key (`algd-export` does, with
`bundle_signing.key`), and the robot holds only the public key (`bundle_signing.pub`):
a bundle that is unsigned, signed by another key, or edited after signing is refused at the
controller's and the monitor's configure and by algd-eval, unless the development opt-out
(`allow_unsigned`) is set, which /diagnostics and the start-up line then show.

Why `cryptography`'s Ed25519 and not OpenSSF's model-signing: the robot side must install on
Python 3.10 to 3.12 with few packages (one abi3 wheel, and Debian/Ubuntu ship it as
python3-cryptography), while model-signing pulls the sigstore stack; the bundle already has
its own manifest of file hashes, so what is missing is one signature over its digest.

Files: signature.json in the bundle ({"algorithm": "ed25519", "key_id", "digest",
"signature"}: not listed in the manifest, it signs it); keys in ~/.config/algd-runtime/ (or
ALGD_SIGNING_KEY / ALGD_BUNDLE_PUBLIC_KEY): the private key as PEM (mode 600), the public key
as one line "ed25519 <base64>"."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from algd_runtime.contract.atomic import atomic_write
from algd_runtime.contract.bundle import SIGNATURE_FILE, BundleError, bundle_digest
from algd_runtime.contract.keys import secret_file_problem

_CONTEXT = b"algd-runtime bundle v1\n"  # what is signed: this, then the digest (no other use of the key can collide)


# The nodes' parameters (controller and monitor): the trusted public key ("": the default
# path) and the development opt-out, which /diagnostics shows as WARN.
SIGNATURE_DEFAULTS = {"bundle_public_key": "", "allow_unsigned": False}


def _config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "algd-runtime"


def default_signing_key_path() -> Path:
    env = os.environ.get("ALGD_SIGNING_KEY")
    return Path(env).expanduser() if env else _config_dir() / "bundle_signing.key"


def default_public_key_path() -> Path:
    env = os.environ.get("ALGD_BUNDLE_PUBLIC_KEY")
    return Path(env).expanduser() if env else _config_dir() / "bundle_signing.pub"


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def create_signing_key(path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """A new key pair: the private key (mode 600, never overwritten) and its public key beside
    it (`.pub`), the one file to copy to the robot."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    public_path = Path(public_path).expanduser() if public_path else path.with_suffix(".pub")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError: never overwrite
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with atomic_write(public_path, "w") as f:
        f.write(f"ed25519 {base64.b64encode(raw).decode()}\n")
    return path, public_path


def ensure_signing_key(path: str | Path | None = None) -> tuple[Path, bool]:
    """The signing key to use (default: default_signing_key_path()), created with its public
    key when missing; (path, created)."""
    path = Path(path).expanduser() if path else default_signing_key_path()
    if path.exists():
        return path, False
    public = default_public_key_path() if path == default_signing_key_path() else path.with_suffix(".pub")
    create_signing_key(path, public)
    return path, True


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    problem = secret_file_problem(path)
    if problem:
        raise BundleError(f"signing key: {problem}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"signing key: {path}: not a PEM Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key: {path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(path: str | Path) -> bytes:
    """The raw 32 bytes of a public key file ("ed25519 <base64>")."""
    path = Path(path).expanduser()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise BundleError(f"bundle_public_key: {path} does not exist (copy the training machine's "
                          f"bundle_signing.pub there, or set bundle_public_key)") from None
    kind, _, b64 = text.partition(" ")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raw = b""
    if kind != "ed25519" or len(raw) != 32:
        raise BundleError(f"bundle_public_key: {path}: expected one line 'ed25519 <base64 of 32 bytes>', "
                          f"got {text[:60]!r}")
    return raw


def sign_bundle(bundle: str | Path, key_path: str | Path) -> str:
    """Sign a bundle (its integrity is checked first); returns the key id."""
    from cryptography.hazmat.primitives import serialization

    bundle = Path(bundle)
    digest = bundle_digest(bundle)
    key = _load_private(Path(key_path).expanduser())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"algorithm": "ed25519", "key_id": key_id(raw), "digest": digest,
              "signature": base64.b64encode(key.sign(_CONTEXT + digest.encode())).decode()}
    with atomic_write(bundle / SIGNATURE_FILE, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return record["key_id"]


@dataclass(frozen=True)
class Signature:
    """What a check found: `trusted` (signed by the given key, over this very bundle), or why not."""

    trusted: bool
    key_id: str | None
    reason: str

    def describe(self) -> str:
        return f"signed by key {self.key_id}" if self.trusted else f"NOT TRUSTED: {self.reason}"


def inspect_signature(bundle: str | Path, public_key: str | Path) -> Signature:
    """Whether `public_key` signed this bundle as it is now. Integrity errors raise BundleError."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    bundle = Path(bundle)
    digest = bundle_digest(bundle)
    path = bundle / SIGNATURE_FILE
    if not path.is_file():
        return Signature(False, None, f"{path}: missing: the bundle is unsigned (sign it on the training machine: "
                                      f"algd-sign {bundle})")
    try:
        record = json.loads(path.read_text())
        signed, sig = str(record["digest"]), base64.b64decode(record["signature"], validate=True)
        signer = str(record.get("key_id"))
    except (ValueError, KeyError, TypeError) as exc:
        return Signature(False, None, f"{path}: expected JSON with digest and signature ({exc})")
    raw = load_public_key(public_key)
    if signed != digest:
        return Signature(False, signer, f"{path} signs digest {signed[:16]}..., the bundle's is {digest[:16]}...: "
                                        f"the bundle changed after it was signed")
    if signer != key_id(raw):
        return Signature(False, signer, f"signed by key {signer}, not by the trusted key {key_id(raw)} "
                                        f"({Path(public_key).expanduser()})")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, _CONTEXT + digest.encode())
    except InvalidSignature:
        return Signature(False, signer, f"{path}: the signature does not verify with the trusted key {key_id(raw)}")
    return Signature(True, signer, "")


def check_bundle(bundle: str | Path, public_key: str | Path | None = None, allow_unsigned: bool = False) -> Signature:
    """The rule of every node and command that deploys a bundle: trusted, or refused (a
    BundleError naming why), unless allow_unsigned (development), which returns the finding."""
    key = public_key or default_public_key_path()
    if allow_unsigned and not Path(key).expanduser().is_file():
        return Signature(False, None, f"no public key at {key}")
    found = inspect_signature(bundle, key)
    if not found.trusted and not allow_unsigned:
        raise BundleError(f"bundle signature: {found.reason}; refused (allow_unsigned: true for development only)")
    return found
