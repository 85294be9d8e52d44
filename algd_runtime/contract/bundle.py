"""The bundle: what the exporter writes and the robot's runtime reads. Its schema, the digest
that names it (manifest.yaml's sha256; the manifest hashes every other file), and the check
of a manifest against the schema. No torch, no ONNX Runtime."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

BUNDLE_SCHEMA = "algd-runtime/bundle"
BUNDLE_SCHEMA_VERSION = 1
MODEL_FILES = ("denoiser", "denoiser_unguided", "critics")  # the ONNX models every bundle holds
MANIFEST, DIGEST_FILE = "manifest.yaml", "manifest.sha256"
SIGNATURE_FILE = "signature.json"  # signs the digest (signing.py), so the manifest cannot list it


class BundleError(ValueError):
    """The bundle cannot be used; the message says which file and what does not match."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_bytes(bundle: Path) -> tuple[bytes, str]:
    """manifest.yaml's bytes and sha256, checked against manifest.sha256. The manifest lists
    every other file's sha256, so its own hash is the digest of the whole bundle."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {bundle} a bundle written by algd-export?)")
    data = path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(data).hexdigest()
    record = bundle / DIGEST_FILE
    if not record.is_file():
        raise BundleError(f"{record}: missing (every bundle written by algd-export has one; re-export it)")
    text = record.read_text(errors="replace")
    parts = text.split()
    if len(parts) != 2 or parts[1] != MANIFEST:
        raise BundleError(f"{record}: expected one line '<sha256>  {MANIFEST}', got {text[:100]!r}")
    if parts[0] != digest:
        raise BundleError(f"{path}: sha256 {digest[:16]}... does not match {DIGEST_FILE}'s {parts[0][:16]}... "
                          f"(edited after export?)")
    return data, digest


def bundle_digest(bundle: str | Path) -> str:
    """The bundle's identity (sha256 of manifest.yaml), verified against manifest.sha256."""
    return _manifest_bytes(Path(bundle))[1]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _posint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate_manifest(m: dict[str, Any]) -> None:
    """Every field the runtime relies on, by value; the BundleError names the field."""
    def need(ok: bool, name: str, want: str, got: Any) -> None:
        if not ok:
            raise BundleError(f"{name}: expected {want}, got {got!r}")

    def section(name: str) -> dict:
        need(isinstance(m.get(name), dict), name, "a mapping", m.get(name))
        return m[name]

    need(isinstance(m.get("task"), str) and m["task"].strip() != "", "task", "a non-empty string", m.get("task"))
    for key in ("obs_dim", "act_dim"):
        need(_posint(m.get(key)), key, "an integer > 0", m.get(key))
    for key in ("act_low", "act_high"):
        v = m.get(key)
        need(isinstance(v, list) and len(v) == m["act_dim"] and all(map(_finite, v)), key,
             f"a list of {m['act_dim']} finite numbers", v)
    for i, (lo, hi) in enumerate(zip(m["act_low"], m["act_high"])):
        need(lo < hi, f"act_low[{i}]", f"below act_high[{i}] = {hi}", lo)
    budget = section("budget")
    v = budget.get("cost_limit")
    need(_finite(v) and v > 0, "budget.cost_limit", "a finite number > 0", v)
    need(budget.get("semantics") in ("episode", "discounted"), "budget.semantics", "'episode' or 'discounted'",
         budget.get("semantics"))
    v = budget.get("max_step_cost")  # absent or null: the task gives no bound
    need(v is None or (_finite(v) and v > 0), "budget.max_step_cost", "a finite number > 0 or null", v)
    v = m.get("lagrange_multiplier")
    need(_finite(v) and v >= 0, "lagrange_multiplier", "a finite number >= 0", v)
    v = m.get("exchange_rate")  # absent or null: not measured (bundles made before it)
    need(v is None or (_finite(v) and v > 0), "exchange_rate", "a finite number > 0 or null", v)
    schedule = section("schedule")
    need(_posint(schedule.get("steps")), "schedule.steps", "an integer > 0", schedule.get("steps"))
    v = schedule.get("initial_std")
    need(_finite(v) and v > 0, "schedule.initial_std", "a finite number > 0", v)
    parity = section("parity")
    tol = parity.get("tolerance")
    need(_finite(tol) and tol > 0, "parity.tolerance", "a finite number > 0", tol)
    errors = parity.get("max_abs_error")
    need(isinstance(errors, dict) and len(errors) > 0, "parity.max_abs_error", "a mapping of errors", errors)
    for key, v in errors.items():
        need(_finite(v) and v <= tol, f"parity.max_abs_error.{key}", f"a finite number <= {tol:g}", v)


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Load and verify manifest.yaml (its digest, every field) and every file in the folder:
    each listed file's size and hash; nothing that is not listed."""
    return verified_manifest(Path(bundle))[0]


def verified_manifest(bundle: Path) -> tuple[dict[str, Any], str]:
    """read_manifest's manifest, and the bundle's digest."""
    path = bundle / MANIFEST
    data, digest = _manifest_bytes(bundle)
    try:
        m = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(m, dict) or m.get("schema") != BUNDLE_SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise BundleError(f"{path}: schema: expected {BUNDLE_SCHEMA!r}, got {got!r}")
    if m.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version: expected {BUNDLE_SCHEMA_VERSION}, got {m.get('schema_version')!r}")
    for key in ("task", "obs_dim", "act_dim", "act_low", "act_high", "schedule", "budget", "parity", "files",
                "lagrange_multiplier"):
        if key not in m:
            raise BundleError(f"{path}: missing field {key!r}")
    try:
        validate_manifest(m)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    if not isinstance(m["files"], dict):
        raise BundleError(f"{path}: files: expected a mapping, got {m['files']!r}")
    for key in MODEL_FILES:
        if not m["files"].get(key):
            raise BundleError(f"{path}: files.{key}: missing")
    listed = {MANIFEST, DIGEST_FILE}
    for key, entry in m["files"].items():
        name = entry.get("path") if isinstance(entry, dict) else None
        # A plain name: a listed file cannot point outside the bundle folder.
        if not isinstance(name, str) or Path(name).name != name or name in (".", "..", MANIFEST, DIGEST_FILE):
            raise BundleError(f"{path}: files.{key}.path: expected a file name in the bundle folder, got {name!r}")
        listed.add(name)
        f = bundle / name
        if not f.is_file():
            raise BundleError(f"{f}: missing (listed in manifest.yaml as files.{key})")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(f"{f}: {size} bytes, manifest.yaml says {entry.get('bytes')} (truncated or replaced?)")
        got = sha256_file(f)
        if got != entry.get("sha256"):
            raise BundleError(f"{f}: sha256 {got[:16]}... does not match manifest.yaml's {str(entry.get('sha256'))[:16]}...")
    for p in sorted(bundle.iterdir()):
        if p.name not in listed and p.name != SIGNATURE_FILE:  # what the digest does not cover is not deployed
            raise BundleError(f"{p}: not part of the bundle (a bundle holds only {MANIFEST}, {DIGEST_FILE}, "
                              f"{SIGNATURE_FILE} and the files manifest.yaml lists); remove it")
    return m, digest
