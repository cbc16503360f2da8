"""The test suite's one support layer, imported as ``tests.support.<module>``, never from conftest.

processes (workers on worker.local's launcher, `batch run` drivers, probes), images (generated here, including
the corpus), hostile (bombs and broken files), manifests, results (reading runs, synthetic results folders),
reports (checks of report output), certificates (a throw-away PKI), browser (headless Chromium over DevTools),
faces (LFW location and skips).
"""
