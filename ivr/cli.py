"""The ``ivr`` command line: Asterisk control, the service, and SIP test phones."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ivr.errors import IvrError
from ivr.logs import configure_logging
from ivr.settings import Settings, load_settings

if TYPE_CHECKING:
    from ivr.asterisk.config import AgentAccount
    from ivr.asterisk.instance import InstanceState

log = logging.getLogger("ivr.cli")


def _instance(settings: Settings) -> Any:
    from ivr.asterisk.instance import AsteriskInstance
    from ivr.asterisk.provision import locate_asterisk

    return AsteriskInstance(locate_asterisk(), settings.asterisk.instance)


def _print(data: dict[str, Any], as_json: bool, out: TextIO = sys.stdout) -> None:
    if as_json:
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        for key, value in data.items():
            out.write(f"{key}: {value}\n")
    out.flush()


def cmd_asterisk(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr asterisk up|down|status``."""
    instance = _instance(settings)
    if args.action == "up":
        started = time.monotonic()
        instance.up(settings.asterisk, settings.regions, api_port=settings.api_port)
        status = instance.status()
        status["seconds"] = round(time.monotonic() - started, 2)
        _print(status, args.json)
        return 0
    if args.action == "down":
        stopped = instance.down()
        _print({"instance": instance.name, "stopped": stopped}, args.json)
        return 0
    status = instance.status()
    _print(status, args.json)
    return 0 if status["running"] else 3


def cmd_call(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr call``: place one real SIP call through the local Asterisk and report on it."""
    from ivr.sip.phone import SipStack, stdout_to_stderr
    from ivr.sip.script import ApiView, parse_step, run_steps

    steps = [parse_step(text) for text in args.step or []]  # a typo fails before dialling
    instance = _instance(settings)
    state = instance.load_state()
    if state is None or instance.pid() is None:
        raise IvrError(f"asterisk instance '{instance.name}' is not running; "
                       "start it with `ivr asterisk up`")
    pbx = state.pbx
    # One token of our own for the API (who answered; the steps read the call and the outbox,
    # which needs admin), deleted when done: the token list is for the tokens people hold.
    with _own_token(settings, "admin" if steps else "supervisor") as token, \
            stdout_to_stderr() as out, SipStack() as stack:
        caller = stack.caller(args.from_number, pbx)
        call = caller.dial(args.to or state.hotline_number,
                           record_to=Path(args.record) if args.record else None)
        result: dict[str, Any] = {"call_id": None, "answered": False, "answered_by": None}
        try:
            call.wait_connected(timeout=args.answer_timeout)
            result["answered"] = True
            for wav in args.play or []:
                call.play(Path(wav))
            if args.dtmf:
                call.send_dtmf(args.dtmf)
            if steps:
                with ApiView(_api_url(settings), token,
                             lambda: call.record.sip_call_id or None) as view:
                    result["steps"] = run_steps(call, steps, view)
                failed = [s for s in result["steps"] if not s["ok"]]
                if failed:
                    result["error"] = f"step {failed[0]['step']!r}: {failed[0]['error']}"
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline and not call.ended:
                time.sleep(0.05)
        except IvrError as exc:
            result["error"] = str(exc)
        finally:
            call.hangup()
            with contextlib.suppress(IvrError):
                call.wait_ended(timeout=5)
                call.wait_released(timeout=5)
        record = call.record
        result.update({
            "call_id": record.sip_call_id or None,
            "sip_status": record.last_status,
            "sip_reason": record.last_reason,
            "codec": record.codec or None,
            "dtmf_received": "".join(record.dtmf_received),
            "recording": str(record.recording) if record.recording else None,
            "seconds_connected": round((record.disconnected_at or time.monotonic())
                                       - record.connected_at, 2) if record.connected_at else 0.0,
        })
        if result["call_id"]:
            result.update(_route_of(settings, result["call_id"], token))
        _print(result, args.json, out)
    return 0 if result["answered"] and "error" not in result else 1


def _api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}/api/v1"


@contextlib.contextmanager
def _own_token(settings: Settings, role: str) -> Iterator[str]:
    """A short-lived token of the command's own for the service's API, deleted afterwards."""
    from datetime import timedelta

    tokens = _tokens(settings)
    token, info = tokens.create(role, "ivr call", timedelta(hours=1))
    try:
        yield token
    finally:
        tokens.delete(info.id)


def _route_of(settings: Settings, sip_call_id: str, token: str) -> dict[str, Any]:
    """Who answered, as the service recorded it (empty when the API is not reachable)."""
    import httpx

    return _poll_route(httpx, f"{_api_url(settings)}/calls/{sip_call_id}", token)


def _poll_route(httpx: Any, url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(20):  # the record's last write follows the hang-up by a moment
        try:
            response = httpx.get(url, timeout=2.0, headers=headers)
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        call = response.json()
        if call.get("state") == "ended":
            break
        time.sleep(0.1)
    return {"answered_by": call["route"]["agent_id"], "ivr_call_id": call["call_id"],
            "region": call["region"], "intent": call["intent"],
            "hangup_cause": call["hangup_cause"]}


def cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr agents``: register simulated agent phones and answer calls until interrupted."""
    state = _running_state(settings)
    accounts = [a for a in state.agents if a.region == args.region][: args.count]
    if not accounts:
        raise IvrError(f"no agent accounts for region '{args.region}' "
                       f"(regions: {', '.join(sorted({a.region for a in state.agents}))})")
    return _run_phones(args, state.pbx, accounts, "calls_answered")


def cmd_supervisor(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr supervisor``: a supervisor's desk phone (listen / whisper / barge rings it)."""
    state = _running_state(settings)
    account = next((a for a in state.supervisors if a.agent_id == args.phone), None)
    if account is None:
        known = ", ".join(a.agent_id for a in state.supervisors) or "none"
        raise IvrError(f"no supervisor phone '{args.phone}' (configured: {known})")
    return _run_phones(args, state.pbx, [account], "monitors_answered")


def _running_state(settings: Settings) -> InstanceState:
    instance = _instance(settings)
    state: InstanceState | None = instance.load_state()
    if state is None or instance.pid() is None:
        raise IvrError(f"asterisk instance '{instance.name}' is not running")
    return state


def _run_phones(args: argparse.Namespace, pbx: str, accounts: list[AgentAccount],
                summary_key: str) -> int:
    """Register ``accounts`` as auto-answering phones until interrupted; JSON lines out."""
    from ivr.sip.phone import AgentOptions, SipStack, stdout_to_stderr

    record_dir = Path(args.record_dir) if args.record_dir else None
    if record_dir is not None:
        try:  # made here: pjsua2 would fail on every call instead
            record_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IvrError(f"--record-dir {record_dir}: {exc.strerror}") from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = AgentOptions(answer_after_s=args.answer_after, record_dir=record_dir,
                           play=Path(args.play) if args.play else None)
    with stdout_to_stderr() as out, SipStack() as stack:
        phones = [stack.agent(a.agent_id, a.password, pbx, options) for a in accounts]
        for phone in phones:
            phone.wait_registered()
            out.write(json.dumps({"agent_id": phone.agent_id, "registered": True}) + "\n")
            out.flush()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        summary = {p.agent_id: len(p.calls) for p in phones}
        out.write(json.dumps({summary_key: summary}) + "\n")
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr serve``: controller + API in one process (optionally with its own Asterisk)."""
    from ivr.service import serve

    instance = _instance(settings) if args.with_asterisk else None
    if instance is not None:
        instance.up(settings.asterisk, settings.regions, api_port=settings.api_port)
        log.info("asterisk up", extra={"instance": instance.name, "dir": str(instance.dir)})
    # uvicorn re-raises the signal it stopped on; SIGTERM's default action would kill the process
    # before the Asterisk it started is stopped. Treat it like Ctrl-C instead.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve(settings)
    finally:
        if instance is not None:
            instance.down()
            log.info("asterisk down", extra={"instance": instance.name})
    return 0


def cmd_account(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr account add``: register a customer account and its phone number."""
    from ivr.store.opening import open_store
    from ivr.verification.codes import AccountDirectory

    store = open_store(settings)
    try:
        account = AccountDirectory(store.engine).add(args.id, args.phone)
    except ValueError as exc:
        raise IvrError(f"account not added: {exc}") from exc
    _print({"account_id": account.id, "phone_number": account.phone_number}, args.json)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr keys status|rotate``: the field data keys and the master key that wraps them."""
    from ivr.store import crypto
    from ivr.store.opening import master_key, open_store, previous_master_keys, read_key_file

    store = open_store(settings)
    keys = crypto.keys_for(store.engine)
    if keys is None:
        raise IvrError("no master key: nothing is sealed (configure voiceprint.master_key_file)")
    if args.action == "rotate":
        if args.new_data_key:
            _print({"new_data_key": keys.new_data_key()}, True)
        if args.new_key_file:
            current = master_key(settings)
            assert current is not None
            new = read_key_file(Path(args.new_key_file))
            counts = crypto.rotate_master(store.engine,
                                          [current, *previous_master_keys(settings)], new)
            _print({"rewrapped_under": new.key_id, **counts}, True)
        if not (args.new_data_key or args.new_key_file):
            raise IvrError("keys rotate needs --new-key-file FILE and/or --new-data-key")
        return 0
    from sqlalchemy import select

    from ivr.store.models import DataKeyRow

    with store.engine.connect() as connection:
        for row in connection.execute(select(DataKeyRow).order_by(DataKeyRow.id)).all():
            _print({"id": row.id, "purpose": row.purpose, "wrapped_by": row.master_id,
                    "created_at": row.created_at.isoformat()}, True)
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr purge``: run the retention job once now (it also runs inside ``ivr serve``)."""
    from ivr.store.opening import open_store, purge_once

    _print(purge_once(settings, open_store(settings)), True)
    return 0


def cmd_nodes(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr nodes``: the controller nodes on this database, their leases and live calls."""
    from sqlalchemy import func, select

    from ivr.store.models import CallRow
    from ivr.store.nodes import NodeLease
    from ivr.store.opening import open_store
    from ivr.store.repository import ACTIVE_STATES

    store = open_store(settings, seal=False)  # reads no sealed column
    listing = NodeLease(store.engine, "ivr-cli", settings.node.lease_s).nodes()
    with store.engine.connect() as connection:
        owned = dict(connection.execute(
            select(CallRow.node_id, func.count()).where(CallRow.state.in_(ACTIVE_STATES))
            .group_by(CallRow.node_id)).tuples().all())
    for node in listing:
        node["active_calls"] = owned.get(str(node["id"]), 0)
        for key, value in node.items():
            if hasattr(value, "isoformat"):
                node[key] = value.isoformat()
    _print({"nodes": listing, "active_calls_without_node": owned.get(None, 0)}, True)
    return 0


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr cluster up|down|status``: several nodes on this machine (PostgreSQL, Redis,
    Kamailio, an Asterisk and a controller per node)."""
    from ivr.cluster.launcher import Cluster

    cluster = Cluster(Path(args.folder), settings,
                      tuple(chr(ord("a") + i) for i in range(args.nodes)))
    if args.action == "up":
        cluster.up()
        _print(cluster.status(), True)
    elif args.action == "down":
        _print({"stopped": cluster.down()}, True)
    else:
        _print(cluster.status(), True)
    return 0


def _tokens(settings: Settings) -> Any:
    from ivr.auth.tokens import TokenStore
    from ivr.store.opening import open_store

    return TokenStore(open_store(settings).engine)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """``ivr token create|list|revoke``: API bearer tokens (stored hashed)."""
    from datetime import timedelta

    tokens = _tokens(settings)
    if args.action == "create":
        if not args.role:
            raise IvrError("token create needs --role admin|supervisor|security|agent")
        try:
            token, info = tokens.create(args.role, args.name or "",
                                        timedelta(days=args.ttl_days), args.agent)
        except ValueError as exc:
            raise IvrError(str(exc)) from exc
        if args.json:
            _print({"token": token, "id": info.id, "role": info.role,
                    "agent_id": info.agent_id, "expires_at": info.expires_at.isoformat()}, True)
        else:
            sys.stdout.write(token + "\n")  # just the token, for $(ivr token create ...)
        return 0
    if args.action == "revoke":
        if not args.id:
            raise IvrError("token revoke needs --id")
        if not tokens.revoke(args.id):
            raise IvrError(f"no token {args.id}")
        _print({"id": args.id, "revoked": True}, args.json)
        return 0
    for info in tokens.listing():
        _print({"id": info.id, "role": info.role, "name": info.name, "agent_id": info.agent_id,
                "expires_at": info.expires_at.isoformat(),
                "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None}, True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ivr``."""
    parser = argparse.ArgumentParser(prog="ivr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    asterisk = sub.add_parser("asterisk", help="run the local Asterisk PBX")
    asterisk.add_argument("action", choices=("up", "down", "status"))
    asterisk.add_argument("--json", action="store_true", help="print one JSON object")
    asterisk.set_defaults(func=cmd_asterisk)

    serve = sub.add_parser("serve", help="run the controller and the REST API")
    serve.add_argument("--with-asterisk", action="store_true",
                       help="start the local Asterisk first and stop it on exit")
    serve.set_defaults(func=cmd_serve)

    call = sub.add_parser("call", help="place a real SIP call through the local Asterisk")
    call.add_argument("--from", dest="from_number", required=True, help="caller number")
    call.add_argument("--to", default=None, help="number dialled (default: the hotline)")
    call.add_argument("--play", action="append", metavar="WAV", help="WAV to play (repeatable)")
    call.add_argument("--dtmf", default="", help="DTMF digits to send after the WAVs")
    call.add_argument("--wait", type=float, default=2.0, help="seconds to stay on the line")
    call.add_argument("--step", action="append", metavar="STEP",
                      help="a scripted step, in order (repeatable): wait:S, keys:DIGITS, "
                           "play:FILE, state:NAME[|NAME][:S], routed[:S], agent[:S], "
                           "code:ACCOUNT[:S], hangup")
    call.add_argument("--answer-timeout", type=float, default=15.0)
    call.add_argument("--record", default=None, metavar="WAV", help="record what the caller hears")
    call.add_argument("--json", action="store_true")
    call.set_defaults(func=cmd_call)

    agents = sub.add_parser("agents", help="run simulated agent phones")
    agents.add_argument("--region", required=True)
    agents.add_argument("--count", type=int, default=1)
    agents.add_argument("--answer-after", type=float, default=1.0)
    agents.add_argument("--play", default=None, metavar="WAV", help="what the agents say")
    agents.add_argument("--record-dir", default=None)
    agents.set_defaults(func=cmd_agents)
    supervisor = sub.add_parser(
        "supervisor", help="run a supervisor's desk phone (rung by listen / whisper / barge)")
    supervisor.add_argument("--phone", default="supervisor-1")
    supervisor.add_argument("--answer-after", type=float, default=0.5)
    supervisor.add_argument("--play", default=None, metavar="WAV",
                            help="what the supervisor says when whispering or barging")
    supervisor.add_argument("--record-dir", default=None, help="keep what the phone heard")
    supervisor.set_defaults(func=cmd_supervisor)
    account = sub.add_parser("account", help="customer accounts (for account-security calls)")
    account.add_argument("action", choices=("add",))
    account.add_argument("--id", required=True)
    account.add_argument("--phone", required=True, help="the registered phone number")
    account.add_argument("--json", action="store_true")
    account.set_defaults(func=cmd_account)

    token = sub.add_parser("token", help="REST API bearer tokens")
    token.add_argument("action", choices=("create", "list", "revoke"))
    token.add_argument("--role", choices=("admin", "supervisor", "security", "agent"))
    token.add_argument("--name", default="", help="who holds it (printable text)")
    token.add_argument("--agent", default=None,
                       help="agent tokens: the agent id the token acts for (must exist)")
    token.add_argument("--ttl-days", type=float, default=30.0)
    token.add_argument("--id", default=None, help="the token id (revoke)")
    token.add_argument("--json", action="store_true")
    token.set_defaults(func=cmd_token)

    keys = sub.add_parser("keys", help="field encryption keys (status, rotation)")
    keys.add_argument("action", choices=("status", "rotate"))
    keys.add_argument("--new-key-file", default=None,
                      help="rotate: re-wrap every data key and template under this master key")
    keys.add_argument("--new-data-key", action="store_true",
                      help="rotate: seal new values under a fresh data key")
    keys.set_defaults(func=cmd_keys)
    purge = sub.add_parser("purge", help="apply the retention settings now")
    purge.set_defaults(func=cmd_purge)
    nodes = sub.add_parser("nodes", help="controller nodes on this database and their leases")
    nodes.set_defaults(func=cmd_nodes)
    cluster = sub.add_parser("cluster", help="several nodes on this machine, behind Kamailio")
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--folder", default="var/cluster")
    cluster.add_argument("--nodes", type=int, default=2, choices=range(1, 5))
    cluster.set_defaults(func=cmd_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ivr`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"ivr: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        code: int = args.func(args, settings)
    except IvrError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
