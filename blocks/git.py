"""Git remotes with credentials that never end up in a URL, an argv or a log.

Credentials travel to git as an ``http.extraHeader`` set through the
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` environment
(git >= 2.31): nothing in ``ps``, nothing in ``.git/config``, nothing in the
command line that GitPython puts into its error messages.

The transports git may use are pinned too, with ``GIT_ALLOW_PROTOCOL`` (which overrides
every ``protocol.*.allow`` in the machine's or user's git config): https, ssh and
file, plus plain http or ``git://`` only for a remote whose own URL uses them. So
``ext::`` (runs a command), ``fd::`` and other transport helpers are refused whatever
the machine's git config says, and an https remote cannot redirect to plain http.
"""

from __future__ import annotations

import base64
import re

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/]*)@")
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# git's "<transport>::<address>" syntax hands the address to a helper (ext:: runs a command)
_TRANSPORT_HELPER = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*::")
# always allowed; git's own protocol names (ssh also covers scp-like and git+ssh:// URLs)
PROTOCOLS = ("https", "ssh", "file")
# allowed only for a remote whose URL says so: no TLS, so only when asked for
OPT_IN_PROTOCOLS = ("http", "git")
_URL_SCHEMES = {"https", "file", *_SSH_SCHEMES, *OPT_IN_PROTOCOLS}


_GIT_LOGO = "https://git-scm.com/images/logos/downloads/Git-Icon-1788C.png"
_DOCS = "https://git-scm.com/docs/git-config#Documentation/git-config.txt-httpextraHeader"


class GitRemote(Block):
    """A git repository reachable over https, ssh or a local path, with credentials.

    Example:
        Load a saved remote:
        ```python
        from slipway.blocks.git import GitRemote
        remote = GitRemote.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "slipway Git Remote"
    _logo_url = _GIT_LOGO  # type: ignore[assignment]
    _documentation_url = _DOCS  # type: ignore[assignment]
    # a rejected URL may hold a password: keep input values out of error messages
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(
        description="Clone URL (https://, ssh://, file:// or a local path); no credentials in it."
    )
    username: str | None = Field(
        default=None,
        description="User for HTTP basic auth (default: none; 'git' when only a token is set).",
    )
    token: SecretStr | None = Field(
        default=None, description="Password or access token for HTTP basic auth (default: none)."
    )

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, value: str) -> str:
        userinfo = _USERINFO.match(value)
        # an ssh user name ("ssh://git@host/...") is not a secret; a password or a token is
        if userinfo and (userinfo.group(1).lower() not in _SSH_SCHEMES or ":" in userinfo.group(2)):
            raise ValueError(
                "the URL carries credentials; put them in 'username' and 'token' instead"
            )
        if value.startswith("-"):
            raise ValueError(f"URL {value!r} must not start with '-'")
        if _TRANSPORT_HELPER.match(value):
            raise ValueError(
                f"URL {value[:60]!r}: git transport helpers ('<transport>::') are refused; "
                "use an https://, ssh:// or file:// URL or a local path"
            )
        scheme = _SCHEME.match(value)
        if scheme and scheme.group(1).lower() not in _URL_SCHEMES:
            raise ValueError(
                f"URL scheme {scheme.group(1)!r} is not allowed "
                f"(allowed: {', '.join(sorted(_URL_SCHEMES))})"
            )
        return value

    def allowed_protocols(self) -> tuple[str, ...]:
        """The git transports this remote may use: :data:`PROTOCOLS`, plus http or git
        when the URL itself uses one of them."""
        scheme = _SCHEME.match(self.url)
        wanted = scheme.group(1).lower() if scheme else ""
        return PROTOCOLS + ((wanted,) if wanted in OPT_IN_PROTOCOLS else ())

    def git_env(self) -> dict[str, str]:
        """Environment for git commands: no prompts, pinned transports, credentials as a
        header."""
        env = {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_ALLOW_PROTOCOL": ":".join(self.allowed_protocols()),
        }
        if self.token is not None:
            pair = f"{self.username or 'git'}:{self.token.get_secret_value()}"
            header = "Authorization: Basic " + base64.b64encode(pair.encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=header,
            )
        return env

    def secret_values(self) -> list[str]:
        """Everything a redactor must mask when this remote was used."""
        if self.token is None:
            return []
        token = self.token.get_secret_value()
        pair = f"{self.username or 'git'}:{token}"
        return [token, base64.b64encode(pair.encode()).decode()]


class AppRepository(GitRemote):
    """The application repository a pipeline builds, with its pipeline file's path.

    Example:
        Save one, then name it as the pipeline's ``repository`` parameter:
        ```python
        from slipway.blocks.git import AppRepository
        AppRepository(url="https://git.example.com/team/app.git",
                      username="ci", token="...").save("example-app")
        repository = AppRepository.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "slipway App Repository"

    default_branch: str | None = Field(
        default=None,
        description=(
            "Branch built when none is given. Default: the remote's own default branch "
            "(what its HEAD points at, as `git clone` picks it)."
        ),
    )
    spec_path: str = Field(
        default="slipway.yaml",
        description="Pipeline file, relative to the repository root (default slipway.yaml).",
    )
