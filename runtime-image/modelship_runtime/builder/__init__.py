"""The artifact builder: source model in, verified and optimized ONNX artifact out.

``pipeline.build(plan)`` fetches, converts, optimizes, validates, benchmarks, selects and publishes;
``cli`` holds the Job entry point (``python -m modelship_runtime build --plan``) and the
``modelship-build`` command for people.
"""
