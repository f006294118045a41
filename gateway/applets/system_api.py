"""Host calls an applet's worker cannot answer itself: the chain (``ws_send_tx``,
``ws_send_tx_with_operator``, ``ws_call_contract``) and W3bstream's in-process system API behind
``ws_api_call`` (``GET /system/hello``, ``POST /system/send_tx``, and w3gate's
``POST /system/device_command``).

The chain is whatever ``applet_call(fn, args)`` the node wires in (``ChainService.applet_call``,
gateway/chain/service.py), or none: then chain calls fail with the reason and the system API
answers 503. A transaction comes back signed and held, as ``{"hash", "operator"}``: the applet
gets its hash now, and the event's commit decides whether it is sent (``HostAnswer.effect``).

A device command (``{"device": "<name or id>", "command": {"relay": 1}}``) is checked now against
the project's ``command_devices`` and given its COMMAND seq, and sent once the event commits, like a
held transaction: an event that fails commands nothing, and carrying the effect out again after a
crash resends the same seq, which the device applies once.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Awaitable, Callable, Protocol

from gateway.applets.pool import HostAnswer
from gateway.applets.project import Project
from gateway.applets.runtime import AppletRuntime
from gateway.errors import W3gateError

ChainCall = Callable[[str, dict], Awaitable[object]]  # (fn, args) -> result
COMMAND_STATUS = {"not_allowed": 403, "unknown_device": 404}  # other refusals are 400


class DeviceCommands(Protocol):
    """The legacy bridge's side of device commands (gateway/legacy/bridge.py)."""

    def prepare_command(self, name_or_id: str, command: object, *, allowed: list[str]) -> tuple[Any, int]:
        """(the device, with its ``device_id``; the seq taken), or a W3gateError with its reason."""
        ...


class HostCalls:
    def __init__(self, runtime: AppletRuntime, chain: ChainCall | None, devices: DeviceCommands | None = None) -> None:
        self.runtime = runtime  # its deployed projects say whose operator keys a call may use
        self.chain = chain
        self.devices = devices  # legacy devices applets may command; None without [serial] or [ble]

    async def __call__(self, fn: str, args: dict) -> object:
        project = self.runtime.projects.get(args.get("project", ""))
        operators = project.operators if project else []
        if fn == "api_call":
            return await self.system_api(args.get("request") or {}, operators, project, args.get("event", ""))
        if self.chain is None:
            raise RuntimeError(f"{fn}: no chain is configured ([chain] enabled = false)")
        result = await self.chain(fn, {**args, "operators": operators})
        if fn == "send_tx":
            return HostAnswer(result["hash"], _tx_effect(result))
        return result

    async def system_api(self, request: dict, operators: list[str], project: Project | None = None,
                         event: str = "") -> dict | HostAnswer:
        """An HTTP-like request from the applet, answered as upstream's Go ``http.Response`` JSON."""
        url = str(request.get("Url") or "").removeprefix("w3bstream://w3bstream.com")
        method = str(request.get("Method") or "GET").upper()
        if method == "GET" and url == "/system/hello":
            return _reply(200, {"message": "hello from w3gate"})
        if method == "POST" and url == "/system/send_tx":
            if self.chain is None:
                return _reply(503, {"error": "no chain is configured"})
            try:
                body = json.loads(base64.b64decode(request.get("Body") or ""))
                tx = await self.chain("send_tx", {
                    "chain_id": None, "operator": body.get("operatorName"), "operators": operators,
                    "project": project.name if project else "", "event": event,
                    "request": {"to": body.get("to"), "value": body.get("value"), "data": body.get("data")}})
            except Exception as e:  # noqa: BLE001 - the applet gets the reason in the response
                return _reply(400, {"error": str(e)})
            return HostAnswer(_reply(200, {"transactionID": tx["hash"], "state": "pending"}), _tx_effect(tx))
        if method == "POST" and url == "/system/device_command":
            return self.device_command(request, project)
        return _reply(404, {"error": f"no system route {method} {url}"})

    def device_command(self, request: dict, project: Project | None) -> dict | HostAnswer:
        """A command for a legacy device, held until the event commits; refusals say why."""
        if self.devices is None:
            return _reply(503, {"error": "this gateway has no legacy devices ([serial] ports, [ble])",
                                "reason": "no_devices"})
        try:
            body = json.loads(base64.b64decode(request.get("Body") or ""))
        except (ValueError, TypeError) as e:
            return _reply(400, {"error": f"the body is not base64 JSON: {e}", "reason": "bad_command"})
        if not isinstance(body, dict) or not isinstance(body.get("device"), str):
            return _reply(400, {"error": 'the body is {"device": "<name or id>", "command": {...}}',
                                "reason": "bad_command"})
        try:
            device, seq = self.devices.prepare_command(body["device"], body.get("command"),
                                                       allowed=project.command_devices if project else [])
        except W3gateError as e:
            return _reply(COMMAND_STATUS.get(e.reason, 400), {"error": e.detail, "reason": e.reason})
        effect = {"kind": "device_command", "device": device.device_id, "command": body["command"], "seq": seq}
        return HostAnswer(_reply(200, {"device": device.device_id, "seq": seq, "state": "pending"}), effect)


def _tx_effect(tx: dict) -> dict:
    return {"kind": "tx", "hash": tx["hash"], "operator": tx.get("operator") or ""}


def _reply(code: int, body: dict) -> dict:
    return {"Status": f"{code}", "StatusCode": code, "Proto": "HTTP/1.1",
            "Header": {"Content-Type": ["application/json"]},
            "Body": base64.b64encode(json.dumps(body).encode()).decode()}
