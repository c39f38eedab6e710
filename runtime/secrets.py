"""The Hugging Face token on AzureML: read from the workspace's Key Vault when the stage starts.

AzureML command jobs have no secret-to-environment mapping, so a compiled node carries only
references (``engines/azureml.py``):

    HF_TOKEN_KEYVAULT_URL=https://<vault>.vault.azure.net   (targets.azureml.key_vault_url)
    HF_TOKEN_KEYVAULT_SECRET=hf-token                       (targets.azureml.hf_token_secret)

With both set and ``HF_TOKEN`` unset, ``hf_token_from_key_vault`` reads the secret with the
job's managed identity (``ManagedIdentityCredential``: on AzureML compute it uses the
``MSI_ENDPOINT``/``MSI_SECRET`` endpoint AzureML provides; a user-assigned identity is picked
by ``AZURE_CLIENT_ID`` or AzureML's ``DEFAULT_IDENTITY_CLIENT_ID``) and puts the value into
``os.environ["HF_TOKEN"]`` for this process only. Anywhere else (local, docker, KFP, Argo)
the variables are absent and nothing happens.

A failure is one line naming the vault and the secret and saying what to fix; the token
itself is never logged, printed or put in an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from core.errors import UserError, first_line

log = logging.getLogger("slm")

TOKEN_ENV = "HF_TOKEN"
SECRET_ENV = "HF_TOKEN_KEYVAULT_SECRET"
URL_ENV = "HF_TOKEN_KEYVAULT_URL"
CLIENT_ID_ENVS = ("AZURE_CLIENT_ID", "DEFAULT_IDENTITY_CLIENT_ID")


class SecretUnreachable(UserError):
    """The vault or the identity endpoint did not answer (or answered 5xx): worth a retry."""

    exit_code = 1


def hf_token_from_key_vault(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``HF_TOKEN`` from Key Vault when the node names a vault and a secret; True if it did."""
    env = os.environ if environ is None else environ
    name, url = env.get(SECRET_ENV), env.get(URL_ENV)
    if not name or env.get(TOKEN_ENV):
        return False
    if not url:
        log.info(
            "%s=%s but no %s (targets.azureml.key_vault_url): no Hugging Face token; public models only",
            SECRET_ENV,
            name,
            URL_ENV,
        )
        return False
    where = f"Key Vault {url}, secret {name!r}"
    try:
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient
    except ImportError as e:
        raise UserError(
            f"reading the Hugging Face token from {where} needs azure-identity and "
            f"azure-keyvault-secrets in the image ({e.name} is missing)"
        ) from None
    for noisy in ("azure", "msal"):  # request logs and multi-line warnings: the error below says it once
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    client_id = next((env[k] for k in CLIENT_ID_ENVS if env.get(k)), None)
    credential = ManagedIdentityCredential(client_id=client_id)
    try:
        with SecretClient(vault_url=url, credential=credential) as client:
            value = client.get_secret(name).value
    except Exception as e:  # noqa: BLE001 - every failure becomes one line; see _explain
        raise _explain(e, where, _set_command(url, name)) from None
    finally:
        credential.close()
    if not value:
        raise UserError(f"{where} is empty; store the token there: {_set_command(url, name)}")
    env[TOKEN_ENV] = value
    log.info("HF_TOKEN read from %s", where)
    return True


def _set_command(url: str, name: str) -> str:
    from urllib.parse import urlsplit

    vault = (urlsplit(url).hostname or "<vault>").split(".")[0]
    return f'az keyvault secret set --vault-name {vault} --name {name} --value "$HF_TOKEN"'


def _explain(e: Exception, where: str, set_command: str) -> UserError:
    """One line for a failed read; never the token (the read failed, so there is none to leak)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    detail = first_line(e)
    status = getattr(e, "status_code", None)
    if isinstance(e, ClientAuthenticationError) and status is None:
        return UserError(
            f"cannot read the Hugging Face token from {where}: the job has no usable managed "
            f"identity (give the compute a managed identity that may read the secret): {detail}"
        )
    if status == 403:
        return UserError(
            f"cannot read the Hugging Face token from {where}: 403 Forbidden, the job's identity may "
            f"not read secrets there (grant it 'Key Vault Secrets User' or a 'get' access policy): {detail}"
        )
    if status == 404:
        return UserError(f"cannot read the Hugging Face token from {where}: 404, no such secret ({set_command})")
    if status == 401:
        return UserError(
            f"cannot read the Hugging Face token from {where}: 401, the vault refused the identity's "
            f"token (wrong tenant?): {detail}"
        )
    if isinstance(e, (ServiceRequestError, ServiceResponseError)) or (status or 0) >= 500:
        return SecretUnreachable(f"cannot read the Hugging Face token from {where}: the vault did not answer: {detail}")
    if isinstance(e, HttpResponseError):
        return UserError(f"cannot read the Hugging Face token from {where}: HTTP {status}: {detail}")
    return UserError(f"cannot read the Hugging Face token from {where}: {type(e).__name__}: {detail}")
