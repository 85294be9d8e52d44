"""algd-export: policy.pt -> bundle (denoiser.onnx, critics.onnx, manifest.yaml)."""
