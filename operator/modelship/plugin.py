"""``kubectl modelship``: read and drive canary releases of ModelDeployments from a terminal.

kubectl runs any executable named ``kubectl-<name>`` on PATH as ``kubectl <name>``; the Python
package installs this module as ``kubectl-modelship`` (also runnable as
``python -m modelship.plugin``). ``status`` prints the release for people (or as JSON); ``promote``,
``abort`` and ``retry`` set the manual-control annotations the operator acts on (see
``modelship.domain.naming.MANUAL_ANNOTATIONS``) with a JSON merge patch on
``metadata.annotations``, never touching the spec, to ``<revision>@s<step>a<attempt>`` from
``status.canary``: the same value the Argo CD actions set, so the operator acts once per step and
attempt whoever asked.

The formatting and the decision what to set are pure functions of the object's dict, tested
without a cluster; only :func:`connect`, :func:`fetch` and :func:`annotate` talk to the API
server.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from modelship.api import v1alpha1 as api
from modelship.api.v1alpha1 import (
    AnalysisResult,
    CanaryPhase,
    CanaryStatus,
    CheckResult,
    ModelDeploymentStatus,
    RevisionStatus,
)
from modelship.domain import naming

PROG = "kubectl modelship"
FIELD_MANAGER = "kubectl-modelship"
DEFAULT_NAMESPACE = "default"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = (5.0, 30.0)
"""Connect and read timeouts (seconds) of each API request."""

_RUNNING = (CanaryPhase.PROGRESSING, CanaryPhase.PAUSED)
ALLOWED_PHASES: dict[str, tuple[CanaryPhase, ...]] = {
    "promote": _RUNNING,
    "promote-full": _RUNNING,
    "abort": (*_RUNNING, CanaryPhase.PROMOTING),
    "retry": (CanaryPhase.ABORTED,),
}
"""The canary phases in which the operator acts on each annotation (the Argo CD actions' rule)."""

_LABEL_WIDTH = 16


class PluginError(Exception):
    """A failure the plugin reports as one message on stderr, exiting 1."""


# --- reading the object (pure) ---------------------------------------------------------------


def where(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of an object."""
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def parse_status(status: Mapping[str, Any] | None) -> ModelDeploymentStatus:
    """The status as the API types read it; a PluginError when it does not match them."""
    try:
        return ModelDeploymentStatus.model_validate(status or {})
    except ValidationError as error:
        raise PluginError(
            f"the status does not match this plugin's {api.API_VERSION} types (is the plugin "
            f"older than the operator?): {error.error_count()} error(s), first: "
            f"{_first_error(error)}"
        ) from error


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def total_steps(spec: Mapping[str, Any] | None) -> int | None:
    """How many canary steps the release walks through: ``spec.rollout.steps``, else the
    default steps of the canary strategy; None for a rolling update."""
    rollout = (spec or {}).get("rollout") or {}
    steps = rollout.get("steps")
    if steps:
        return len(steps)
    if rollout.get("strategy", api.RolloutStrategy.CANARY.value) != api.RolloutStrategy.CANARY:
        return None
    return len(api.RolloutSpec().effective_steps)


def step_label(canary: CanaryStatus, steps: int | None) -> str:
    """The 1-based step, ``2/3`` when the step count is known."""
    return f"{canary.step + 1}/{steps}" if steps else str(canary.step + 1)


def annotation_value(canary: CanaryStatus) -> str:
    """``<revision>@s<step>a<attempt>``: a new value for each step and attempt of the canary
    (``step`` as ``status.canary.step`` has it, 0-based, as the Argo CD actions write it)."""
    return f"{canary.revision}@s{canary.step}a{canary.attempt}"


# --- status (pure) ---------------------------------------------------------------------------


def _field(label: str, value: str, indent: int = 0) -> str:
    return f"{' ' * indent}{label + ':':<{_LABEL_WIDTH - indent}} {value}".rstrip()


def _number(value: float | None) -> str:
    return "no data" if value is None else f"{value:g}"


def format_check(check: CheckResult) -> str:
    """``name: value vs threshold (verdict) message``."""
    return (
        f"{check.name}: {_number(check.value)} vs {_number(check.threshold)} "
        f"({check.verdict.value}) {check.message}"
    ).rstrip()


def _ready_line(status: ModelDeploymentStatus) -> str:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    if ready is None:
        return _field("Ready", "unknown (no Ready condition yet)")
    return _field("Ready", f"{ready.status.value} ({ready.reason}) {ready.message}")


def _stable_lines(stable: RevisionStatus | None) -> list[str]:
    if stable is None:
        return [_field("Stable", "none yet")]
    return [
        _field("Stable", f"revision {stable.revision}"),
        _field("Digest", stable.digest, 2),
        _field("Pods", f"{stable.ready_replicas}/{stable.replicas} ready", 2),
    ]


def _analysis_lines(result: AnalysisResult | None) -> list[str]:
    if result is None:
        return [_field("Last analysis", "none yet", 2)]
    summary = (
        f"{result.verdict.value} at {result.time}, {result.requests} requests "
        f"({result.stable_requests} stable) over {_number(result.interval_seconds)}s"
    )
    if result.message:
        summary += f": {result.message}"
    return [_field("Last analysis", summary, 2), *(f"    {format_check(c)}" for c in result.checks)]


def _canary_lines(canary: CanaryStatus | None, steps: int | None) -> list[str]:
    if canary is None:
        return [_field("Canary", "none")]
    phase = canary.phase.value + (f" ({canary.reason})" if canary.reason else "")
    return [
        _field("Canary", f"revision {canary.revision}"),
        _field("Digest", canary.digest, 2),
        _field("Phase", phase, 2),
        *([_field("Message", canary.message, 2)] if canary.message else []),
        _field("Step", step_label(canary, steps), 2),
        _field("Weight", f"{canary.weight}% (desired {canary.desired_weight}%)", 2),
        _field("Pods", f"{canary.ready_replicas}/{canary.replicas} ready", 2),
        _field(
            "Intervals",
            f"{canary.successful_intervals} passed, {canary.failed_intervals} failed, "
            f"{canary.inconclusive_intervals} inconclusive",
            2,
        ),
        _field("Attempt", str(canary.attempt), 2),
        *_analysis_lines(canary.last_analysis),
    ]


def format_status(status: Mapping[str, Any] | None, steps: int | None) -> str:
    """The status for people: phase, Ready, the stable revision and the canary release."""
    parsed = parse_status(status)
    phase = parsed.phase.value if parsed.phase else "unknown (the operator has not reported yet)"
    lines = [
        _field("Phase", phase),
        _ready_line(parsed),
        *_stable_lines(parsed.stable),
        *_canary_lines(parsed.canary, steps),
    ]
    return "\n".join(lines)


def describe(obj: Mapping[str, Any]) -> str:
    """``status`` output of a whole ModelDeployment: a title, then :func:`format_status`."""
    body = format_status(obj.get("status"), total_steps(obj.get("spec")))
    return f"ModelDeployment {where(obj)}\n{body}"


def format_json(status: Mapping[str, Any] | None) -> str:
    """``status -o json``: ``status.stable`` and ``status.canary`` (null when absent)."""
    parsed = parse_status(status)
    document = {
        "stable": parsed.stable.to_wire() if parsed.stable else None,
        "canary": parsed.canary.to_wire() if parsed.canary else None,
    }
    return json.dumps(document, indent=2)


# --- manual control (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """An annotation to set, and what to tell the user."""

    action: str
    annotation: str
    value: str
    message: str
    already_set: bool = False


def _alternatives(phases: Sequence[CanaryPhase]) -> str:
    names = [p.value for p in phases]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def plan_request(action: str, obj: Mapping[str, Any]) -> Request:
    """What ``action`` (promote, promote-full, abort, retry) sets on ``obj``; a PluginError
    when the operator would ignore it."""
    canary = parse_status(obj.get("status")).canary
    if canary is None:
        raise PluginError(
            f"{action}: ModelDeployment {where(obj)} has no canary release (status.canary is empty)"
        )
    allowed = ALLOWED_PHASES[action]
    if canary.phase not in allowed:
        raise PluginError(
            f"{action}: canary {canary.revision} of {where(obj)} is {canary.phase.value}; "
            f"{action} applies only while it is {_alternatives(allowed)}"
        )
    annotation = naming.MANUAL_ANNOTATIONS[action]
    value = annotation_value(canary)
    current = ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation)
    step = step_label(canary, total_steps(obj.get("spec")))
    return Request(
        action=action,
        annotation=annotation,
        value=value,
        message=f"{action} requested for revision {canary.revision} at step {step}; the "
        "operator acts on its next reconcile",
        already_set=current == value,
    )


def format_request(obj: Mapping[str, Any], request: Request) -> str:
    """What was set (or was already), then what it asks for."""
    setting = f"{request.annotation}={request.value}"
    if request.already_set:
        head = f"ModelDeployment {where(obj)} already has {setting} (it acts once per value)"
    else:
        head = f"ModelDeployment {where(obj)} annotated {setting}"
    return f"{head}\n{request.message}"


# --- the API server --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Which ModelDeployment, and the client to reach it with."""

    objects: Any
    """A ``kubernetes.client.CustomObjectsApi``."""
    namespace: str
    name: str

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


def _kubernetes() -> tuple[Any, Any]:
    try:
        from kubernetes import client, config
    except ImportError as error:  # the client comes with the operator extra
        raise PluginError(
            "kubectl-modelship needs the Kubernetes client: pip install 'modelship[operator]'"
        ) from error
    return client, config


def _context_namespace(config: Any, kubeconfig: str | None, context: str | None) -> str | None:
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return cast("str | None", namespace)


def _in_cluster_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def connect(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """A ``CustomObjectsApi`` and the default namespace: the kubeconfig (``--kubeconfig``, else
    KUBECONFIG, else ~/.kube/config) at ``--context`` or its current context, else in-cluster
    credentials when no kubeconfig is found and none was named."""
    client, config = _kubernetes()
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        namespace = _context_namespace(config, kubeconfig, context)
    except config.ConfigException as error:
        if kubeconfig or context:
            named = f" {kubeconfig}" if kubeconfig else ""
            raise PluginError(f"cannot load the kubeconfig{named}: {error}") from error
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as in_cluster:
            raise PluginError(
                f"no kubeconfig ({error}) and not in a cluster ({in_cluster}); pass "
                "--kubeconfig or set KUBECONFIG"
            ) from in_cluster
        namespace = _in_cluster_namespace()
    objects = client.CustomObjectsApi(client.ApiClient(configuration))
    return objects, namespace or DEFAULT_NAMESPACE


def _api_error(target: Target, error: Exception) -> PluginError:
    status = getattr(error, "status", None)
    if status is None:  # no answer: DNS, refused connection, TLS, timeout
        return PluginError(f"cannot reach the API server: {error}")
    if status == 404:
        return PluginError(f"ModelDeployment {target.where} not found")
    body = getattr(error, "body", None) or ""
    try:
        detail = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        detail = str(body or error)
    reason = getattr(error, "reason", "")
    return PluginError(f"ModelDeployment {target.where}: {reason} ({status}): {detail}")


def _call(target: Target, method: str, **kwargs: Any) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        result = getattr(target.objects, method)(
            api.GROUP,
            api.VERSION,
            target.namespace,
            api.PLURAL,
            target.name,
            _request_timeout=REQUEST_TIMEOUT,
            **kwargs,
        )
    except (ApiException, HTTPError) as error:
        raise _api_error(target, error) from error
    return cast("dict[str, Any]", result)


def fetch(target: Target) -> dict[str, Any]:
    """The ModelDeployment as the API server has it."""
    return _call(target, "get_namespaced_custom_object")


def annotate(target: Target, annotation: str, value: str) -> dict[str, Any]:
    """A JSON merge patch of ``metadata.annotations`` only (the spec is never written)."""
    body = {"metadata": {"annotations": {annotation: value}}}
    return _call(target, "patch_namespaced_custom_object", body=body, field_manager=FIELD_MANAGER)


# --- commands --------------------------------------------------------------------------------


def run_status(target: Target, output: str) -> str:
    obj = fetch(target)
    return format_json(obj.get("status")) if output == "json" else describe(obj)


def run_action(target: Target, action: str) -> str:
    obj = fetch(target)
    request = plan_request(action, obj)
    if not request.already_set:
        annotate(target, request.annotation, request.value)
    return format_request(obj, request)


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: given before or after the command, a value is not overwritten by a default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="namespace of the ModelDeployment (default: the kubeconfig context's, else "
        f"{DEFAULT_NAMESPACE})",
    )
    common.add_argument(
        "--kubeconfig",
        default=argparse.SUPPRESS,
        help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else in-cluster)",
    )
    common.add_argument(
        "--context", default=argparse.SUPPRESS, help="kubeconfig context (default: current)"
    )
    return common


_DESCRIPTION = """\
Show and drive the canary releases of Modelship ModelDeployments (mdep).

promote, abort and retry only set an annotation on the ModelDeployment
(modelship.io/promote, promote-full, abort, retry) to <revision>@s<step>a<attempt>
from status.canary; the operator acts on it on its next reconcile, once per value.
They refuse (exit 1) when the operator would ignore the annotation."""

_EPILOG = """examples:
  kubectl modelship status minilm -n ml           the release, for people
  kubectl modelship status minilm -n ml -o json   status.stable and status.canary
  kubectl modelship promote minilm -n ml          go on to the next step
  kubectl modelship promote --full minilm -n ml   skip the remaining steps
  kubectl modelship abort minilm -n ml            roll back to the stable revision
  kubectl modelship retry minilm -n ml            release the aborted revision again

exit status: 0 done, 1 refused or failed (message on stderr), 2 usage error"""

_COMMANDS: dict[str, tuple[str, str]] = {
    "promote": (
        "advance the canary past its current step",
        "Advance the canary past its current step: ends the step's pause or a wait for "
        "promotion (a step without pause). With --full, skip the remaining steps and promote "
        "the canary. Only while the canary is Progressing or Paused.",
    ),
    "abort": (
        "roll the canary back to the stable revision",
        "Abort the release: the canary is rolled back and the stable revision serves all "
        "traffic. Only while the canary is Progressing, Paused or Promoting.",
    ),
    "retry": (
        "release an aborted canary revision again",
        "Release the aborted canary revision again, as a new attempt. Only while the canary is "
        "Aborted.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status",
        parents=[common],
        help="show the phase, the stable revision and the canary release",
        description="Show the ModelDeployment's phase and Ready message, the stable revision "
        "and the canary release: step, weights, pods, analysis counts and the last analysis "
        "with each check's value against its threshold.",
    )
    status.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: status.stable and status.canary as JSON",
    )
    for command, (summary, description) in _COMMANDS.items():
        sub = commands.add_parser(command, parents=[common], help=summary, description=description)
        if command == "promote":
            sub.add_argument(
                "--full",
                action="store_true",
                help="skip the remaining steps (sets modelship.io/promote-full)",
            )
    for sub in commands.choices.values():
        sub.add_argument("name", metavar="NAME", help="the ModelDeployment")
    return parser


def _action(args: argparse.Namespace) -> str:
    if args.command == "promote" and args.full:
        return "promote-full"
    return cast(str, args.command)


def _run(args: argparse.Namespace) -> str:
    objects, default_namespace = connect(
        getattr(args, "kubeconfig", None), getattr(args, "context", None)
    )
    target = Target(objects, getattr(args, "namespace", None) or default_namespace, args.name)
    try:
        if args.command == "status":
            return run_status(target, args.output)
        return run_action(target, _action(args))
    finally:
        objects.api_client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kubectl-modelship`` entry point: 0 done, 1 refused or failed, 2 usage error."""
    args = build_parser().parse_args(argv)
    try:
        print(_run(args))
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
