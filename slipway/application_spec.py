"""GitOps Applications: what a sync keeps in a cluster, and how (Argo CD's Application).

An application file lives under ``deployments/applications/`` and holds exactly one of
two top-level keys:

``application``
    one app in one cluster: where its manifests are (a ``ManifestsRepository`` block
    or a git URL, a revision, a folder, plain YAML or kustomize), where they go (a
    cluster block and a namespace), and the sync policy::

        application:
          name: example-app
          repo: example-app-manifests      # ManifestsRepository block, or a git URL
          target_revision: main            # branch, tag or 40-hex SHA; default: the
                                           # block's branch, HEAD for a URL
          path: overlays/production
          kind: kustomize
          destination: {cluster: example-cluster, namespace: production}
          sync_policy: {automated: true, prune: true, self_heal: true}
          sync_options: {create_namespace: true}
          retry: {limit: 5, backoff: {duration: 5s, factor: 2, max_duration: 3m}}

``application_set``
    one app in several clusters, like an ApplicationSet with a list generator: a
    ``template`` (every application key but ``name``, ``path`` and ``destination``)
    and one element per cluster (``name``, ``cluster``, ``namespace``, ``path``). The
    generated applications are named ``<set name>-<element name>``. ``progressive:
    true`` syncs them in list order, waits for each to become Healthy (at most
    ``health_timeout_seconds``) and stops at the first that does not.

Keys are snake_case; Argo CD's camelCase spellings (``targetRevision``,
``syncPolicy``, ``selfHeal``, ``allowEmpty``, ``syncOptions``, ``createNamespace``,
``maxDuration``) are accepted too. Defaults are Argo CD's: nothing automated, no
prune, no self-heal, no empty syncs, and a retry of 5 attempts starting at 5 s,
doubling, each wait at most 3 minutes. Durations are seconds, or Go-style strings
(``5s``, ``3m``, ``1m30s``).

Errors name the file, the line and the key path, as for pipeline files
(:mod:`slipway.spec_loader`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)

from slipway.exceptions import SpecError, SpecProblem
from slipway.safe_yaml import YamlProblem, load_round_trip
from slipway.spec_loader import _line_map, _plain, _problems_from_validation, read_spec_text
from slipway.spec_types import NAME_PATTERN, Name, RelPath, StrictModel

APPLICATIONS_DIR = Path("deployments") / "applications"
MAX_FILE_BYTES = 1_000_000
# A DNS label: what Kubernetes accepts as a namespace, and what fits a label value.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_APP_NAME = 63  # the app name is the app.kubernetes.io/instance label's value

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ApplicationSpecError(SpecError):
    """An application file failed validation; ``problems`` lists each one."""

    def __init__(self, file: str, problems: list[SpecProblem]) -> None:
        super().__init__(file, problems)
        count = len(problems)
        lines = "\n".join(f"  {p.render(file)}" for p in problems)
        noun = "problem" if count == 1 else "problems"
        self.args = (f"invalid application file {file} ({count} {noun}):\n{lines}",)


def parse_duration(value: Any) -> Any:
    """``5``, ``"5s"``, ``"3m"``, ``"1m30s"``, ``"500ms"`` -> seconds (a float)."""
    if isinstance(value, bool):
        return value  # pydantic refuses it as a float
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        raise ValueError(f"not a duration: {value!r} (seconds, or e.g. '5s', '3m', '1m30s')")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=86400)]


def _namespace(value: str) -> str:
    if not re.match(NAMESPACE_PATTERN, value):
        raise ValueError(
            f"namespace {value!r} is not a DNS label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


Namespace = Annotated[str, AfterValidator(_namespace)]


class Backoff(StrictModel):
    """How long to wait between sync attempts: ``duration x factor^n``, at most ``max_duration``."""

    duration: Duration = Field(
        default=5.0, description="Wait before the first retry, seconds or '5s'. Default: 5 s."
    )
    factor: float = Field(
        default=2.0, ge=1, le=10, description="Each further wait is multiplied by this. Default: 2."
    )
    max_duration: Duration = Field(
        default=180.0,
        validation_alias=AliasChoices("max_duration", "maxDuration"),
        description="The longest one wait may be, seconds or '3m'. Default: 3 min.",
    )


class RetrySpec(StrictModel):
    """Retries of a failed sync (Argo CD's ``retry``; its defaults)."""

    limit: int = Field(
        default=5, ge=0, le=100, description="Retries after the first attempt. Default: 5."
    )
    backoff: Backoff = Field(default_factory=Backoff, description="Waits between attempts.")

    def delays(self) -> list[float]:
        """The wait before each retry, in seconds."""
        b = self.backoff
        return [min(b.duration * b.factor**n, b.max_duration) for n in range(self.limit)]


class SyncPolicy(StrictModel):
    """What a sync may do without a person (Argo CD's ``syncPolicy.automated``)."""

    automated: bool = Field(
        default=False,
        description=(
            "Apply what git changed on every run (scheduled or not). Off: runs only report, "
            "unless started with manual_sync. Default: off."
        ),
    )
    prune: bool = Field(
        default=False,
        description=(
            "Delete objects this app created that git no longer has. Default: off (they are "
            "reported as needing a prune)."
        ),
    )
    self_heal: bool = Field(
        default=False,
        validation_alias=AliasChoices("self_heal", "selfHeal"),
        description=(
            "Put back objects changed in the cluster by hand (drift) although git did not "
            "change. Default: off (drift is reported and notified only)."
        ),
    )
    allow_empty: bool = Field(
        default=False,
        validation_alias=AliasChoices("allow_empty", "allowEmpty"),
        description=(
            "Allow a sync whose manifests render nothing (with prune: delete everything). "
            "Default: off (an empty render is refused)."
        ),
    )


class SyncOptions(StrictModel):
    create_namespace: bool = Field(
        default=False,
        validation_alias=AliasChoices("create_namespace", "createNamespace"),
        description="Create the destination namespace when it is missing. Default: off.",
    )


class Destination(StrictModel):
    cluster: Name = Field(
        description="KubernetesCredentials or KubernetesClusterConfig block name. Required."
    )
    namespace: Namespace = Field(
        description="Namespace for objects whose manifests name none. Required."
    )


class ApplicationTemplate(StrictModel):
    """Everything an application says except its name, folder and destination."""

    repo: str = Field(
        min_length=1,
        max_length=1000,
        description=(
            "The manifests repository: a ManifestsRepository block name, or a git URL "
            "(https://, ssh://, file://) without credentials. Required."
        ),
    )
    target_revision: str | None = Field(
        default=None,
        validation_alias=AliasChoices("target_revision", "targetRevision"),
        max_length=255,
        description=(
            "Branch, tag, 40-hex commit SHA or HEAD. Default: the block's branch, or HEAD "
            "(the remote's default branch) for a URL."
        ),
    )
    kind: Literal["plain", "kustomize"] = Field(
        default="plain",
        description="'plain' YAML files, or a 'kustomize' folder. Default: plain.",
    )
    sync_policy: SyncPolicy = Field(
        default_factory=SyncPolicy, validation_alias=AliasChoices("sync_policy", "syncPolicy")
    )
    sync_options: SyncOptions = Field(
        default_factory=SyncOptions, validation_alias=AliasChoices("sync_options", "syncOptions")
    )
    retry: RetrySpec = Field(default_factory=RetrySpec)
    notifier: Name | None = Field(
        default=None,
        description=(
            "SlackNotifier block told about drift, failed syncs and Degraded health. Default: none."
        ),
    )

    @property
    def repo_is_url(self) -> bool:
        return "://" in self.repo

    @model_validator(mode="after")
    def _repo_form(self) -> ApplicationTemplate:
        if not self.repo_is_url and not re.match(NAME_PATTERN, self.repo):
            raise ValueError(
                f"repo {self.repo!r} is neither a block name (letters, digits, '.', '_', '-') "
                "nor a URL with a scheme (https://, ssh://, file://)"
            )
        if self.repo.startswith("-"):
            raise ValueError(f"repo {self.repo!r} must not start with '-'")
        return self


class Application(ApplicationTemplate):
    """One app's manifests, kept in one namespace of one cluster."""

    name: Name = Field(description="The app's name; labels the objects it owns. Required.")
    path: RelPath = Field(
        description="Folder (or, for plain, file) in the repository; '.' for its root. Required."
    )
    destination: Destination

    @model_validator(mode="after")
    def _short_name(self) -> Application:
        if len(self.name) > MAX_APP_NAME:
            raise ValueError(f"name {self.name!r} is longer than {MAX_APP_NAME} characters")
        return self


class ListElement(StrictModel):
    """One cluster of an application set."""

    name: Name = Field(description="Element name, e.g. dev, staging, production. Required.")
    cluster: Name = Field(description="Cluster block name. Required.")
    namespace: Namespace = Field(description="Destination namespace. Required.")
    path: RelPath = Field(description="Folder of this cluster's manifests. Required.")


class ListGenerator(StrictModel):
    elements: list[ListElement] = Field(min_length=1, description="One per cluster, in order.")


class Generator(StrictModel):
    list_: ListGenerator = Field(alias="list", description="The list generator.")


class ApplicationSet(StrictModel):
    """One app in several clusters (Argo CD's ApplicationSet with a list generator)."""

    name: Name = Field(description="Prefix of the generated applications' names. Required.")
    generator: Generator
    template: ApplicationTemplate
    progressive: bool = Field(
        default=False,
        description=(
            "Sync one element after the other, in list order, and stop at the first that is "
            "not Healthy. Default: off (all at once)."
        ),
    )
    health_timeout_seconds: Duration = Field(
        default=300.0,
        description=(
            "With progressive: how long to wait for an element to become Healthy before "
            "stopping. Default: 300 s."
        ),
    )

    @model_validator(mode="after")
    def _unique_elements(self) -> ApplicationSet:
        seen: set[str] = set()
        for element in self.generator.list_.elements:
            if element.name in seen:
                raise ValueError(f"element name {element.name!r} appears twice")
            seen.add(element.name)
            if len(self.app_name(element)) > MAX_APP_NAME:
                raise ValueError(
                    f"application name {self.app_name(element)!r} is longer than "
                    f"{MAX_APP_NAME} characters"
                )
        return self

    def app_name(self, element: ListElement) -> str:
        return f"{self.name}-{element.name}"

    def applications(self) -> list[Application]:
        """The generated applications, in list order."""
        base = self.template.model_dump(by_alias=False)
        return [
            Application.model_validate(
                {
                    **base,
                    "name": self.app_name(element),
                    "path": element.path,
                    "destination": {"cluster": element.cluster, "namespace": element.namespace},
                }
            )
            for element in self.generator.list_.elements
        ]


class ApplicationFile(StrictModel):
    application: Application | None = None
    application_set: ApplicationSet | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ApplicationFile:
        if (self.application is None) == (self.application_set is None):
            raise ValueError("give exactly one of 'application' or 'application_set'")
        return self

    @property
    def content(self) -> Application | ApplicationSet:
        found = self.application or self.application_set
        assert found is not None
        return found


# --- loading ---------------------------------------------------------------------------


def parse_application_file(text: str, file: str) -> Application | ApplicationSet:
    """Validate application YAML; :class:`ApplicationSpecError` lists every problem with
    its line and key path."""
    try:
        tree = load_round_trip(text)
    except YamlProblem as exc:
        raise ApplicationSpecError(file, [SpecProblem("", exc.problem, exc.line)]) from None
    if not isinstance(tree, Mapping):
        got = "an empty file" if tree is None else "a list" if isinstance(tree, list) else "a value"
        raise ApplicationSpecError(
            file, [SpecProblem("", f"the top level must be a mapping, got {got}")]
        )
    lines = _line_map(tree)
    try:
        parsed = ApplicationFile.model_validate(_plain(tree))
    except ValidationError as exc:
        problems = _problems_from_validation(exc, lines, ApplicationFile)
        raise ApplicationSpecError(file, problems) from None
    return parsed.content


def load_application_file(
    path: Path, *, display_name: str | None = None
) -> Application | ApplicationSet:
    """Read and validate an application file from disk."""
    name = display_name or str(path)
    text = read_spec_text(
        path, name, limit=MAX_FILE_BYTES, what="application file", error=ApplicationSpecError
    )
    return parse_application_file(text, name)


def find_application(
    reference: str, folder: Path | None = None
) -> tuple[Path, Application | ApplicationSet]:
    """An application by file path (``deployments/applications/x.yaml``) or by name (the
    file ``<name>.yaml`` or ``<name>.yml`` in ``folder``, default
    ``deployments/applications`` under the working directory).

    Raises:
        ApplicationSpecError: no such file, or the file is invalid.
    """
    folder = folder if folder is not None else Path.cwd() / APPLICATIONS_DIR
    if reference.endswith((".yaml", ".yml")) or "/" in reference:
        path = Path(reference)
        return path, load_application_file(path, display_name=reference)
    if not re.match(NAME_PATTERN, reference):
        raise ApplicationSpecError(
            reference, [SpecProblem("", "not an application name or a .yaml file")]
        )
    for suffix in (".yaml", ".yml"):
        path = folder / f"{reference}{suffix}"
        if path.is_file():
            return path, load_application_file(path)
    known = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    raise ApplicationSpecError(
        reference,
        [
            SpecProblem(
                "",
                f"no application file {reference}.yaml in {folder}"
                + (f" (there: {', '.join(known)})" if known else ""),
            )
        ],
    )
