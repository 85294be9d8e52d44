"""The robot's engine (numpy + ONNX Runtime, no torch): the policy runtime, the safety rules, the io adapters."""
