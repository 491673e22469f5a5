"""Property-based fuzzing of the whole REST API from its OpenAPI schema (schemathesis).

Every operation is called with generated requests under a token of a role that may use it; no
response may be a 5xx and every response must match the schema (schemathesis' checks).
``/ready`` is left out: its 503 while the PBX is not connected is its contract. (The
schemathesis pytest plugin does not run under this pytest, so the operations are driven with
hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from api_app import WiredApi, wired_api
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.specs.openapi import checks

from ivr.routing.rules import RESERVED_IDS

from conftest import drop_lazy_speechbrain_modules

pytestmark = [pytest.mark.unit, pytest.mark.model, pytest.mark.slow]

EXAMPLES = 30
# Not what the issue asks (no 5xx, responses match the schema): whether every schema-valid
# body is accepted. Rules are checked beyond JSON Schema (overlapping windows, known skills),
# so valid-looking bodies are rightly refused with 422; ignoring the auth header is tested by
# the role matrix instead (``ignored_auth`` would strip our token and expect 401 everywhere).
EXCLUDED = [checks.positive_data_acceptance, checks.ignored_auth]


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> WiredApi:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    return wired_api(tmp_path_factory.mktemp("fuzz"), build_tiny_ecapa())


def test_no_server_errors_and_schema_conformance(wired: WiredApi) -> None:
    drop_lazy_speechbrain_modules()  # the model was loaded by this test's own fixture
    schema = schemathesis.openapi.from_asgi("/openapi.json", wired.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/ready":
            continue
        operations += 1
        role = "security" if operation.path.startswith("/api/v1/voiceprint") else "admin"
        headers = {"Authorization": f"Bearer {wired.tokens[role]}"}

        try:
            _fuzz(operation, headers)
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 25
    assert not failures, "\n\n".join(failures)


def _fuzz(operation: object, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Case) -> None:
        if (case.path_parameters or {}).get("rule_id") in RESERVED_IDS:
            # /rules/history, /export and /import are their own operations (no rule may take
            # those ids), so such a "rule id" is answered by them, not by /rules/{rule_id}.
            return
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

    run()
