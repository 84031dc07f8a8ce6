"""NIXL's OBJ backend (the S3 path of Dynamo's KVBM object tier, G4) against kvstore's S3 API,
with no kvstore code in between: a real ``kvstore serve`` with a tenants file (SigV4 checked),
the OBJ plugin of ``nixl-cu12`` configured the way Dynamo configures it (explicit credentials
and region, ``endpoint_override``, path-style, ``AWS_EC2_METADATA_DISABLED=true`` so the SDK
never probes the instance metadata address). Whole-object PUT from DRAM, ranged GET into DRAM,
the existence query (HEAD), and objects above ``crtMinLimit`` through the CRT client's multipart
upload. Needs the NIXL extra (``make test-nixl``); skipped without it unless
KVSTORE_REQUIRE_NIXL=1."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
from kvstore_client.nixl import _load, nixl_available, ucx_env_defaults  # noqa: E402

from ..served import ACCESS_KEY, REGION, SECRET_KEY, s3_client, served  # noqa: E402

if not nixl_available() and not os.environ.get("KVSTORE_REQUIRE_NIXL"):
    pytest.skip("nixl is not importable (install the extra: make test-nixl)",
                allow_module_level=True)

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
BUCKET = "nixl-obj"
CRT_MIN = 5 * MiB  # objects from this size go through the CRT client, as multipart uploads
XFER_S = 60.0


def _agent(endpoint: str, req_checksum: str | None) -> object:
    ucx_env_defaults()
    api = _load()
    agent = api.nixl_agent(f"obj-{os.getpid()}", api.nixl_agent_config(backends=[]))
    assert "OBJ" in agent.get_plugin_list()
    agent.create_backend("OBJ", {
        "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": REGION,
        "bucket": BUCKET, "endpoint_override": endpoint, "scheme": "http",
        "use_virtual_addressing": "false", "crtMinLimit": str(CRT_MIN),
        **({"req_checksum": req_checksum} if req_checksum else {})})
    return agent


def _dram(arrays: list[np.ndarray]) -> list[tuple[int, int, int, str]]:
    return [(int(a.ctypes.data), int(a.nbytes), 0, "") for a in arrays]


def _xfer(agent: object, arrays: list[np.ndarray]) -> object:
    return agent.get_xfer_descs([d[:3] for d in _dram(arrays)], "DRAM")  # type: ignore[attr-defined]


def _run(agent: object, op: str, local: object, remote: object) -> None:
    h = agent.initialize_xfer(op, local, remote, agent.name)  # type: ignore[attr-defined]
    assert h, f"{op} not initialized"
    assert agent.transfer(h) != "ERR"  # type: ignore[attr-defined]
    deadline = time.monotonic() + XFER_S
    state = "PROC"
    while time.monotonic() < deadline:
        state = agent.check_xfer_state(h)  # type: ignore[attr-defined]
        if state in ("DONE", "ERR"):
            break
        time.sleep(0.005)
    agent.release_xfer_handle(h)  # type: ignore[attr-defined]
    assert state == "DONE", f"{op}: {state}"


# The SDK's default ("when supported") sends every PUT as aws-chunked with a CRC64NVME trailer;
# "required" sends no checksum where S3 does not demand one (PutObject, UploadPart).
@pytest.mark.parametrize("req_checksum", [
    None,
    "required"])
def test_obj_backend_put_ranged_get_head_and_multipart(tmp_path: Path,
                                                       req_checksum: str | None) -> None:
    with served(tmp_path) as srv:
        s3 = s3_client(srv.endpoint)
        s3.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        agent = _agent(srv.endpoint, req_checksum)
        sizes = {"small-block": 1 * MiB + 123, "big-block": 12 * MiB + 5}  # big: multipart
        src = {k: np.frombuffer(os.urandom(n), dtype=np.uint8).copy() for k, n in sizes.items()}
        dram = agent.register_memory(_dram(list(src.values())), "DRAM")  # type: ignore[attr-defined]
        assert dram is not None
        objs = [(0, sizes[k], i, k) for i, k in enumerate(sizes)]
        obj_descs = agent.register_memory(objs, "OBJ")  # type: ignore[attr-defined]
        assert obj_descs is not None
        # whole-object PUT of each block from DRAM
        local = _xfer(agent, list(src.values()))
        _run(agent, "WRITE", local, obj_descs.trim())
        for k, a in src.items():
            body = s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()  # type: ignore[attr-defined]
            assert body == a.tobytes()
        # existence: one HEAD per object; a registered but never written key is absent
        missing = agent.register_memory([(0, 4096, 7, "never-written")], "OBJ")  # type: ignore[attr-defined]
        resp = agent.query_memory(  # type: ignore[attr-defined]
            [(0, 0, 0, "small-block"), (0, 0, 0, "big-block"), (0, 0, 0, "never-written")],
            "OBJ", mem_type="OBJ")
        assert [r is not None for r in resp] == [True, True, False]
        # ranged GET (offset in the remote descriptor) into DRAM, across the multipart parts
        out = np.zeros(7 * MiB, dtype=np.uint8)
        out_reg = agent.register_memory(_dram([out]), "DRAM")  # type: ignore[attr-defined]
        off = 3 * MiB + 17
        remote = agent.get_xfer_descs([(off, out.size, 1)], "OBJ")  # type: ignore[attr-defined]
        _run(agent, "READ", _xfer(agent, [out]), remote)
        assert out.tobytes() == src["big-block"][off:off + out.size].tobytes()
        small = np.zeros(sizes["small-block"], dtype=np.uint8)
        small_reg = agent.register_memory(_dram([small]), "DRAM")  # type: ignore[attr-defined]
        _run(agent, "READ", _xfer(agent, [small]),
             agent.get_xfer_descs([(0, small.size, 0)], "OBJ"))  # type: ignore[attr-defined]
        assert small.tobytes() == src["small-block"].tobytes()
        for d in (dram, obj_descs, missing, out_reg, small_reg):
            agent.deregister_memory(d)  # type: ignore[attr-defined]
