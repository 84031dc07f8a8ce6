"""tools/s3_conformance.py's own parts: the suite config it writes holds every section the
suite's configure() reads, the tenants file is one the server loads, and a junit file is
counted and its failures grouped as the report says."""

from __future__ import annotations

import configparser
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from kvstore.auth import Tenants

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3_conformance",
                                                  ROOT / "tools" / "s3_conformance.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["s3_conformance"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_config_and_tenants_match() -> None:
    tool = _tool()
    cfg = configparser.RawConfigParser()
    cfg.read_string(tool.suite_config(18400))
    assert cfg.getint("DEFAULT", "port") == 18400 and cfg.get("DEFAULT", "host") == "127.0.0.1"
    tenants = Tenants.from_dict(tool.tenants_doc())
    for section in ["s3 main", "s3 alt", "s3 tenant", "iam", "iam root", "iam alt root"]:
        for key in ["access_key", "secret_key", "display_name", "user_id", "email"]:
            assert cfg.get(section, key), (section, key)
        t = tenants.by_access_key(cfg.get(section, "access_key"))
        assert t is not None and t.name == cfg.get(section, "user_id")
    assert cfg.get("s3 tenant", "tenant")
    assert "auth_aws4" not in tool.marker_expr() and "versioning" in tool.marker_expr()


def test_junit_summary_and_features(tmp_path: Path) -> None:
    tool = _tool()
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="test_ok"/>'
        '<testcase classname="t" name="test_bucket_acl_default"><failure message="NotImpl">'
        'x</failure></testcase>'
        '<testcase classname="t" name="test_multipart_copy_small"><error>boom\nmore</error>'
        '</testcase>'
        '<testcase classname="t" name="test_skip"><skipped message="no"/></testcase>'
        '</testsuite></testsuites>')
    counts, failed = tool.summarize(junit)
    assert counts == {"passed": 1, "failed": 2, "skipped": 1}
    assert failed == [("test_bucket_acl_default", "NotImpl"), ("test_multipart_copy_small", "boom")]
    assert tool.feature_of("test_bucket_acl_default") == "ACLs"
    assert tool.feature_of("test_multipart_copy_small") is None
    assert tool.feature_of("test_object_raw_get", "calling the PutBucketAcl operation") == "ACLs"
    text = tool.report(counts, failed, tmp_path, 1.0)
    assert "1 passed, 2 failed, 1 skipped of 4 selected" in text
    assert "`test_multipart_copy_small`: boom" in text and "`test_bucket_acl_default`" not in text
