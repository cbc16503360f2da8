"""imagebatch's gRPC image worker: rotate and classify images sent as encoded bytes."""

__version__ = "0.1.0"
