"""Generated protobuf/gRPC modules (``python proto/codegen.py``); do not edit them by hand."""
