"""Run ceph/s3-tests (a peer's S3 conformance suite) against a live kvstore server and count.

    python tools/s3_conformance.py --suite ../s3-tests --python ../s3t-venv/bin/python
    python tools/s3_conformance.py --suite DIR --python PY --record   # + loadtest/results/

``--suite`` is a checkout of https://github.com/ceph/s3-tests; ``--python`` an interpreter
with its requirements.txt installed (boto3, munch, gevent, isodate, httplib2, lxml, pytest).
Neither is vendored here nor needed by ``make test``: this is a measurement, like the
benchmarks, not a gate. The tool writes the suite's config and four tenants (main, alt,
tenant, iam) into a temporary directory, serves on 127.0.0.1 with them, runs
``s3tests/functional/test_s3.py`` less the markers of features kvstore does not offer by
design (``EXCLUDED_MARKERS``), and prints the counts, the failures grouped by feature
(``FEATURES``: which failures are of something not offered, which are not), and each
remaining failure with its first message line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET  # noqa: S405 - our own pytest's junit file, not input
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 30.0
SUITE_SECONDS_MAX = 3600
STOP_SECONDS_MAX = 15.0

# Marked features kvstore does not offer (docs/ARCHITECTURE.md, "Still knowingly different").
EXCLUDED_MARKERS = [
    "abac_test", "appendobject", "auth_aws2", "bucket_encryption", "bucket_logging",
    "bucket_logging_cleanup", "bucket_policy", "cloud_restore", "cloud_transition",
    "delete_marker", "encryption", "fails_on_aws", "fails_without_logging_rollover", "group",
    "group_policy", "iam_account", "iam_cross_account", "iam_role", "iam_tenant", "iam_user",
    "lifecycle", "lifecycle_expiration", "lifecycle_transition", "object_lock",
    "object_ownership", "role_policy", "s3select", "s3website", "s3website_redirect_location",
    "s3website_routing_rules", "session_policy", "sns", "sse_s3", "storage_class", "tagging",
    "test_of_sts", "token_claims_trust_policy_test", "token_principal_tag_role_policy_test",
    "token_request_tag_trust_policy_test", "token_resource_tags_test", "token_role_tags_test",
    "token_tag_keys_test", "user_policy", "versioning", "webidentity_test",
]

# Unmarked tests of features not offered, by a word of their name (first match wins).
FEATURES = [
    ("acl", "ACLs"), ("grant", "ACLs"), ("policy", "bucket policy"), ("cors", "CORS"),
    ("post_object", "POST object (browser form upload)"), ("versioning", "versioning"),
    ("version", "versioning"), ("lock", "object lock"), ("public_block", "public access block"),
    ("publicaccess", "public access block"), ("attributes", "GetObjectAttributes"),
    ("tagging", "tagging"), ("lifecycle", "lifecycle"), ("encryption", "encryption"),
    ("sse", "encryption"), ("logging", "bucket logging"), ("ownership", "object ownership"),
    ("anon", "anonymous access"), ("torrent", "torrent"), ("website", "website"),
    ("v2", "SigV2"), ("append", "append object"), ("restore", "restore"),
]


def tenants_doc() -> dict[str, object]:
    return {"tenants": [
        {"name": name, "access_key": ak, "secret_key": sk}
        for name, ak, sk in [("testid", "S3TMAINACCESSKEY0001", "main-secret-key-of-the-suite"),
                             ("altid", "S3TALTACCESSKEY00001", "alt-secret-key-of-the-suite"),
                             ("tenantid", "S3TTENANTACCESSKEY01", "tenant-secret-of-the-suite"),
                             ("iamid", "S3TIAMACCESSKEY00001", "iam-secret-key-of-the-suite")]]}


def suite_config(port: int) -> str:
    """s3tests.conf: every section the suite's ``configure()`` reads."""
    t = {d["name"]: d for d in tenants_doc()["tenants"]}  # type: ignore[attr-defined]

    def section(title: str, name: str, extra: str = "") -> str:
        return (f"[{title}]\ndisplay_name = {name}\nuser_id = {name}\nemail = {name}@kvs.test\n"
                f"access_key = {t[name]['access_key']}\nsecret_key = {t[name]['secret_key']}\n"
                f"{extra}\n")

    return (f"[DEFAULT]\nhost = 127.0.0.1\nport = {port}\nis_secure = False\n"
            "ssl_verify = False\n\n[fixtures]\nbucket prefix = s3t-{random}-\n\n"
            + section("s3 main", "testid")
            + section("s3 alt", "altid") + section("s3 tenant", "tenantid", "tenant = tenantid\n")
            + section("iam", "iamid") + section("iam root", "iamid")
            + section("iam alt root", "altid"))


def marker_expr() -> str:
    return "not (" + " or ".join(EXCLUDED_MARKERS) + ")"


# Failures whose message shows the call that failed is of a feature not offered.
MESSAGE_FEATURES = [
    ("acl", "ACLs"), ("PutBucketVersioning", "versioning"), ("GetObjectAttributes",
                                                             "GetObjectAttributes"),
    ("Signature Version 2", "SigV2"), ("policy", "bucket policy"),
]


def feature_of(test: str, message: str = "") -> str | None:
    """The feature not offered that a failure is of: by a word of the test's name, else by
    the call its message names; None when it is neither (a real difference to look at)."""
    name = test.rsplit("::", 1)[-1].lower()
    for word, feature in FEATURES:
        if word in name:
            return feature
    for word, feature in MESSAGE_FEATURES:
        if word.lower() in message.lower():
            return feature
    return None


def summarize(junit: Path) -> tuple[Counter[str], list[tuple[str, str]]]:
    """(outcome counts, [(test, first message line)] of failures and errors) of a junit file."""
    counts: Counter[str] = Counter()
    failed: list[tuple[str, str]] = []
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - our own file
        name = case.get("name", "?")
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            counts["failed"] += 1
            msg = (bad.get("message") or bad.text or "").strip().split("\n")[0]
            failed.append((name, msg[:160]))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failed


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        if not _free(port):
            return
        time.sleep(0.2)
    raise SystemExit(f"the server did not listen on {port} within {START_SECONDS_MAX} s")


def _git(cwd: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
                       timeout=30)
    return r.stdout.strip() or "?"


def report(counts: Counter[str], failed: list[tuple[str, str]], suite: Path,
           seconds: float) -> str:
    by_feature = Counter(feature_of(t, m) or "other" for t, m in failed)
    total = sum(counts.values())
    lines = [
        f"# ceph/s3-tests against kvstore ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- kvstore commit {_git(ROOT, 'rev-parse', '--short', 'HEAD')}, suite commit "
        f"{_git(suite, 'rev-parse', '--short', 'HEAD')}, {platform.node()} "
        f"({os.cpu_count()} CPUs), {seconds:.0f} s",
        "- `s3tests/functional/test_s3.py`, markers excluded: " + ", ".join(EXCLUDED_MARKERS),
        f"- **{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} "
        f"skipped of {total} selected**",
        "", "| failures by feature not offered (the test's name, or the call that failed) | count |",
        "|---|---|"]
    lines += [f"| {f} | {n} |" for f, n in by_feature.most_common()]
    lines += ["", "## The other failures", ""]
    lines += [f"- `{t}`: {m}" for t, m in failed if feature_of(t, m) is None]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", type=Path, required=True, help="a ceph/s3-tests checkout")
    ap.add_argument("--python", default=sys.executable,
                    help="an interpreter with the suite's requirements")
    ap.add_argument("--port", type=int, default=18400)
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression")
    ap.add_argument("--record", action="store_true", help="write loadtest/results/s3tests-*.md")
    a = ap.parse_args(argv)
    suite = a.suite.resolve()
    if not (suite / "s3tests" / "functional" / "test_s3.py").is_file():
        raise SystemExit(f"{suite} is not a ceph/s3-tests checkout")
    if not (_free(a.port) and _free(a.port + 1)):
        raise SystemExit(f"port {a.port} or {a.port + 1} is taken")
    with tempfile.TemporaryDirectory(prefix="kvs-s3tests-") as tmp:
        work = Path(tmp)
        (work / "tenants.json").write_text(json.dumps(tenants_doc()))
        (work / "s3tests.conf").write_text(suite_config(a.port))
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'clients'}"}
        server = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--host", "127.0.0.1", "--port",
             str(a.port), "--bulk-port", str(a.port + 1), "--data-dir", str(work / "data"),
             "--capacity", "4GiB", "--segment-size", "128MiB", "--credentials",
             str(work / "tenants.json")], env=env, stdout=subprocess.DEVNULL,
            stderr=open(work / "server.log", "wb"))  # noqa: SIM115 - closed with the dir
        try:
            _wait_up(a.port, server)
            began = time.monotonic()
            cmd = [a.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "s3tests/functional/test_s3.py", "-m", marker_expr(),
                   f"--junitxml={work / 'junit.xml'}"]
            if a.select:
                cmd += ["-k", a.select]
            suite_env = {**env, "S3TEST_CONF": str(work / "s3tests.conf"), "PYTHONPATH": ""}
            subprocess.run(cmd, cwd=suite, env=suite_env, check=False,
                           timeout=SUITE_SECONDS_MAX, stdout=subprocess.DEVNULL)
            seconds = time.monotonic() - began
        finally:
            server.terminate()
            try:
                server.wait(STOP_SECONDS_MAX)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(STOP_SECONDS_MAX)
        counts, failed = summarize(work / "junit.xml")
    text = report(counts, failed, suite, seconds)
    print(text)
    if a.record:
        out = ROOT / "loadtest" / "results" / time.strftime("s3tests-%Y%m%d-%H%M%S.md")
        out.write_text(text)
        print(f"recorded {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
