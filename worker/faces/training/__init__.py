"""Making and judging face models, apart from serving: nothing here runs in ``worker serve``.

``dataset`` (folder-per-person galleries, the held-out split), ``train`` (embeddings
to a calibrated artifact), ``evaluate`` (the held-out split through a real worker),
``baseline`` (eigenfaces), ``scenes`` (small faces pasted into 1080p photos),
``metrics`` (scikit-learn's, as markdown) and ``commands`` (`worker train`, `worker evaluate`).
"""
