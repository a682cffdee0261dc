"""The ModelDeployment API types: pure pydantic, no kopf, kubernetes or onnxruntime."""
