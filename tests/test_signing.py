"""Who made a bundle (issue 20, item 2): algd-export signs the digest with an Ed25519 key, and
the controller, the monitor, algd-sign --verify and algd-eval trust only the public key's
bundles. The session's key pair is private to the tests (conftest)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from algd_runtime.contract.bundle import BundleError, bundle_digest
from algd_runtime.contract.signing import check_bundle, create_signing_key, inspect_signature, sign_bundle

PUB = Path(os.environ["ALGD_BUNDLE_PUBLIC_KEY"])
BIN = Path(sys.executable).parent


def edited_copy(bundle: Path, dest: Path, limit: float = 50.0) -> Path:
    """The attack the digest alone missed: the manifest's budget edited and manifest.sha256
    recomputed, so the bundle is intact by its own digest."""
    shutil.copytree(bundle, dest)
    manifest = yaml.safe_load((dest / "manifest.yaml").read_text())
    manifest["budget"]["cost_limit"] = limit
    (dest / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    digest = hashlib.sha256((dest / "manifest.yaml").read_bytes()).hexdigest()
    (dest / "manifest.sha256").write_text(f"{digest}  manifest.yaml\n")
    assert bundle_digest(dest) == digest  # intact, as far as the digest can tell
    return dest


def test_an_exported_bundle_is_signed_by_the_exporting_key_and_trusted(vesde_bundle):
    found = check_bundle(vesde_bundle, PUB)
    assert found.trusted and found.key_id and found.describe() == f"signed by key {found.key_id}"


def test_a_bundle_signed_by_another_key_is_refused(vesde_bundle, tmp_path):
    other, _ = create_signing_key(tmp_path / "other.key")
    copy = shutil.copytree(vesde_bundle, tmp_path / "bundle")
    other_id = sign_bundle(copy, other)
    with pytest.raises(BundleError, match=rf"bundle signature: signed by key {other_id}, not by the trusted key "
                                          r"[0-9a-f]{16} .*; refused \(allow_unsigned: true for development only\)"):
        check_bundle(copy, PUB)
    assert check_bundle(copy, tmp_path / "other.pub").trusted  # the robot that trusts that key takes it


def test_an_edited_bundle_with_its_digest_recomputed_is_refused(vesde_bundle, tmp_path):
    copy = edited_copy(vesde_bundle, tmp_path / "bundle")
    with pytest.raises(BundleError, match=r"signs digest [0-9a-f]{16}\.\.\., the bundle's is [0-9a-f]{16}\.\.\.: "
                                          r"the bundle changed after it was signed"):
        check_bundle(copy, PUB)
    # ... and one that also rewrites the signed digest in signature.json
    record = json.loads((copy / "signature.json").read_text())
    record["digest"] = bundle_digest(copy)
    (copy / "signature.json").write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"the signature does not verify with the trusted key"):
        check_bundle(copy, PUB)


def test_an_unsigned_bundle_is_refused_unless_allowed(vesde_bundle, tmp_path):
    copy = shutil.copytree(vesde_bundle, tmp_path / "bundle")
    (copy / "signature.json").unlink()
    with pytest.raises(BundleError, match=r"missing: the bundle is unsigned"):
        check_bundle(copy, PUB)
    found = check_bundle(copy, PUB, allow_unsigned=True)  # development: the finding, not a refusal
    assert not found.trusted and found.describe().startswith("NOT TRUSTED: ")
    assert not inspect_signature(copy, PUB).trusted


def test_the_controller_refuses_at_configure_and_the_opt_out_shows(vesde_bundle, tmp_path):
    import rclpy
    from lifecycle_msgs.msg import State  # noqa: F401 -- the lifecycle interfaces are installed
    from rclpy.parameter import Parameter

    from algd_runtime.ros.controller_node import ControllerNode

    copy = edited_copy(vesde_bundle, tmp_path / "bundle")
    rclpy.init()
    try:
        for allow in (False, True):
            node = ControllerNode(namespace=f"/signed_{os.getpid()}_{int(allow)}", parameter_overrides=[
                Parameter(k, value=v) for k, v in {"bundle": str(copy), "autostart": False,
                                                   "allow_unsigned": allow}.items()])
            node.trigger_configure()
            if allow:
                assert node.core is not None and node.safety["allow_unsigned"] is True
                assert node.safety["bundle_signature"].startswith("NOT TRUSTED: "), node.safety
            else:
                assert node.core is None  # configure failed: nothing runs the edited bundle
            node.destroy_node()
    finally:
        rclpy.shutdown()


def test_algd_sign_verifies_and_signs(vesde_bundle, tmp_path):
    run = lambda *a: subprocess.run([str(BIN / "algd-sign"), *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=60)
    ok = run(vesde_bundle, "--verify")
    assert ok.returncode == 0 and "signed by key" in ok.stdout, ok.stdout + ok.stderr
    copy = edited_copy(vesde_bundle, tmp_path / "bundle")
    bad = run(copy, "--verify")
    assert bad.returncode == 1 and "NOT TRUSTED, the controller refuses it" in bad.stdout, bad.stdout
    assert run(copy).returncode == 0  # whoever holds the private key vouches for the edit
    assert run(copy, "--verify").returncode == 0
    made = run("--new-key", tmp_path / "k.key")
    assert made.returncode == 0 and (tmp_path / "k.pub").is_file()
    assert oct((tmp_path / "k.key").stat().st_mode & 0o777) == "0o600"
    again = run("--new-key", tmp_path / "k.key")
    assert again.returncode == 2 and "never overwritten" in again.stderr
