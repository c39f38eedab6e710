"""Names the engines accept: the one set of rules the config (at load time, for every verb),
the engine settings and ``validate`` apply.

Each rule is a function ``value -> value`` raising ValueError with the reason, usable as a
pydantic ``AfterValidator`` (:data:`DnsLabel` and friends) and by the validator directly.
"""

from __future__ import annotations

import re
from typing import Annotated, Callable

from pydantic import AfterValidator

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")  # a key of a Kubernetes Secret or ConfigMap
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KFP_PIPELINE = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")  # kfp's compiler check of dsl.pipeline(name=)
AZUREML_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")  # experiments, environments, models
AZUREML_COMPUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,30}[A-Za-z0-9]$")
KEY_VAULT_SECRET = re.compile(r"^[0-9A-Za-z-]{1,127}$")
# A display name is free text on AzureML, but it is shown and passed on command lines: printable,
# one line, no shell metacharacters.
_DISPLAY_BAD = re.compile(r"[\x00-\x1f\x7f`$|;&<>\\\"']")


def _rule(pattern: re.Pattern, limit: int, what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not isinstance(value, str) or not pattern.match(value) or len(value) > limit:
            raise ValueError(f"{value!r} is not {what} (at most {limit} characters)")
        return value

    return check


dns_label = _rule(DNS1123_LABEL, 63, "a DNS-1123 label: a-z, 0-9 and '-', starting and ending with a letter or digit")
dns_subdomain = _rule(DNS1123_SUBDOMAIN, 253, "a DNS-1123 name: a-z, 0-9, '-' and '.'")
secret_key = _rule(SECRET_KEY, 253, "a Kubernetes key: letters, digits, '-', '_' and '.'")
env_var = _rule(ENV_VAR, 255, "an environment variable name: letters, digits and '_', not starting with a digit")
kfp_pipeline = _rule(KFP_PIPELINE, 128, "a KFP pipeline name: a-z, 0-9 and '-', starting with a letter or digit")
azureml_name = _rule(
    AZUREML_NAME, 255, "an AzureML name: letters, digits, '-', '_' and '.', starting with one of the first two"
)
azureml_compute = _rule(AZUREML_COMPUTE, 32, "an AzureML compute name: letters, digits and '-', starting with a letter")
key_vault_secret = _rule(KEY_VAULT_SECRET, 127, "a Key Vault secret name: letters, digits and '-'")


def display_name(value: str) -> str:
    if not isinstance(value, str) or not value.strip() or _DISPLAY_BAD.search(value) or len(value) > 256:
        raise ValueError(
            f"{value!r} is not a display name (one line of at most 256 printable characters, no quotes or shell "
            "metacharacters)"
        )
    return value


def job_name(value: str) -> str:
    """The config's ``name``: every engine's pipeline, job and object names derive from it, so it
    must be a name each accepts: a DNS-1123 label (KFP's pipeline names and Kubernetes objects;
    AzureML names and display names accept it too). Argo's tighter length limits with a schedule
    are checked when compiling for Argo."""
    return dns_label(value)


def timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(value, str) or not value or value.startswith(("/", ".")) or ".." in value:
            raise ValueError
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    return value


DnsLabel = Annotated[str, AfterValidator(dns_label)]
DnsSubdomain = Annotated[str, AfterValidator(dns_subdomain)]
SecretKey = Annotated[str, AfterValidator(secret_key)]
EnvVar = Annotated[str, AfterValidator(env_var)]
AzureMLName = Annotated[str, AfterValidator(azureml_name)]
AzureMLCompute = Annotated[str, AfterValidator(azureml_compute)]
KeyVaultSecret = Annotated[str, AfterValidator(key_vault_secret)]
TimeZone = Annotated[str, AfterValidator(timezone)]
JobName = Annotated[str, AfterValidator(job_name)]
