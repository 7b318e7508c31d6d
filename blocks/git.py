"""Git remotes with credentials that never end up in a URL, an argv or a log.

Credentials travel to git as an ``http.extraHeader`` set through the
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` environment
(git >= 2.31): nothing in ``ps``, nothing in ``.git/config``, nothing in the
command line that GitPython puts into its error messages.
"""

from __future__ import annotations

import base64
import re

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@")


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
        if _USERINFO.match(value):
            raise ValueError(
                "the URL carries credentials; put them in 'username' and 'token' instead"
            )
        if value.startswith("-"):
            raise ValueError(f"URL {value!r} must not start with '-'")
        return value

    def git_env(self) -> dict[str, str]:
        """Environment for git commands: no prompts, credentials as a header."""
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
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

    default_branch: str = Field(
        default="main", description="Branch built when none is given (default main)."
    )
    spec_path: str = Field(
        default="slipway.yaml",
        description="Pipeline file, relative to the repository root (default slipway.yaml).",
    )
