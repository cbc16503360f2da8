"""Generated protobuf/gRPC modules (``python -m worker.api.codegen``); do not edit them by hand."""
