"""The Modelship runtime server: Open Inference Protocol (v2) over REST and gRPC on onnxruntime.

Layers, outermost first: protocol adapters (:mod:`.rest`, :mod:`.grpc_server`) translate wire
formats into the protocol-neutral :mod:`.dataplane`, which validates requests against the model's
signature and calls a :class:`.model.Predictor`: the onnxruntime model itself, optionally wrapped
by :mod:`.batching`. Metrics (:mod:`.metrics`) observe the data plane from the outside.
"""
