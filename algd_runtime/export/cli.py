"""algd-export policy.pt [-o DIR] [--batch N] [--opset N] [--force] [--signing-key FILE]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-export", description="Freeze a policy.pt into an ONNX bundle.")
    p.add_argument("policy", type=Path)
    p.add_argument("-o", "--out", type=Path, help="bundle folder (default: bundle/ beside the policy)")
    p.add_argument("--batch", type=int, help="fix the batch size (default: dynamic batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--force", action="store_true", help="replace a bundle already in the output folder")
    p.add_argument("--signing-key", type=Path, metavar="FILE",
                   help="Ed25519 key that signs the bundle (default: ~/.config/algd-runtime/bundle_signing.key, "
                        "created on first use with its .pub, the file the robot trusts)")
    args = p.parse_args(argv)

    from algd_runtime.learn.checkpoint import CheckpointError
    from algd_runtime.export.exporter import ExportError, export_bundle
    from algd_runtime.contract.bundle import BundleError, bundle_digest
    from algd_runtime.contract.signing import default_public_key_path, default_signing_key_path, ensure_signing_key

    out = args.out or args.policy.parent / "bundle"
    if args.signing_key is None or args.signing_key.expanduser() == default_signing_key_path():
        key, created = ensure_signing_key(None)
        if created:
            print(f"created the bundle signing key {key} (keep it on this machine) and its public key "
                  f"{default_public_key_path()} (copy it to the robot: the nodes trust the bundles it signed)")
    elif not args.signing_key.expanduser().is_file():
        print(f"error: --signing-key: {args.signing_key} does not exist (create one with "
              f"algd-sign --new-key {args.signing_key})", file=sys.stderr)
        return 2
    print(f"exporting {args.policy} -> {out} (opset {args.opset}, batch {args.batch or 'dynamic'}); "
          f"measuring parity on 1000 observations ...", flush=True)
    try:
        manifest = export_bundle(args.policy, out, batch=args.batch, opset=args.opset, force=args.force,
                                 signing_key=args.signing_key)
    except (CheckpointError, ExportError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    par = manifest["parity"]["max_abs_error"]
    print("parity (max abs error vs torch): " + ", ".join(f"{k} {v:.2e}" for k, v in par.items()))
    near = {k: v for k, v in manifest["parity"]["near_kink"].items() if isinstance(v, dict) and v["points"]}
    if near:  # either branch of a kink is right: reported, not certified
        print("near a critic's kink (reported apart): " + ", ".join(
            f"{k} {v['points']} points, max {v['max_abs_error']:.2e}" for k, v in near.items()))
    rate = manifest.get("exchange_rate")
    print("exchange rate (median |grad_a Q| / median |grad_a Qc|, the monitor's WARN asks for 4 x it): "
          + (f"{rate:.3g}" if rate is not None else f"not measured ({manifest['task']} is not on this machine)"))
    for key, f in manifest["files"].items():
        print(f"  {f['path']:<24} {f['bytes'] / 1024:8.1f} KiB  sha256 {f['sha256'][:16]}...")
    print(f"wrote {out}/manifest.yaml")
    # What a deployment pins (PolicyRuntime.load(expect_digest=...)): it covers every file.
    print(f"bundle digest (sha256 of manifest.yaml): {bundle_digest(out)}")
    print(f"signed: {out}/signature.json (key {signing_key_id(out)})")
    return 0


def signing_key_id(bundle: Path) -> str:
    import json

    return str(json.loads((bundle / "signature.json").read_text()).get("key_id"))


if __name__ == "__main__":
    sys.exit(main())
