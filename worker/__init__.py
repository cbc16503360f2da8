"""imagebatch's gRPC image worker: rotate and classify images sent as encoded bytes."""
