"""The committed generated modules must be exactly what `python proto/codegen.py` makes now."""

import subprocess
import sys

from tests.support.processes import ROOT

API = ROOT / "worker" / "api"


def test_generated_modules_are_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "codegen.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    fresh = sorted((tmp_path / "worker" / "api").glob("*_pb2*.py*"))
    assert {f.name for f in fresh} == {f.name for f in API.glob("*_pb2*.py*")}
    stale = [f.name for f in fresh if f.read_bytes() != (API / f.name).read_bytes()]
    assert not stale, f"stale generated code: {stale}; run `python proto/codegen.py` and commit"


def test_legacy_contract_has_no_package_and_exact_wire_names():
    from worker.api import abimage_pb2

    fd = abimage_pb2.DESCRIPTOR
    assert fd.package == ""
    assert fd.services_by_name["ABImageService"].full_name == "ABImageService"
    img = fd.message_types_by_name["ABImage"]
    assert [(f.name, f.number) for f in img.fields] == [("color", 1), ("data", 2), ("width", 3), ("height", 4)]
    req = fd.message_types_by_name["ABImageRotateRequest"]
    assert [(f.name, f.number) for f in req.fields] == [("rotation", 1), ("image", 2)]
    assert [(v.name, v.number) for v in req.enum_types_by_name["Rotation"].values] == [
        ("NONE", 0), ("NINETY_DEG", 1), ("ONE_EIGHTY_DEG", 2), ("TWO_SEVENTY_DEG", 3),
    ]
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in fd.services_by_name["ABImageService"].methods}
    assert methods == {
        "RotateImage": ("ABImageRotateRequest", "ABImage"),
        "RecognizeFace": ("ABCustomImageEndpointRequest", "ABCustomImageEndpointResponse"),
    }
    assert [(f.name, f.number) for f in fd.message_types_by_name["ABCustomImageEndpointResponse"].fields] == [
        ("classification", 1)
    ]
