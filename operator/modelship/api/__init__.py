"""The ModelDeployment API types: pure pydantic, importable without kopf, kubernetes or onnxruntime."""
