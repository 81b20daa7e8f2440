"""Drives the emulator with Microsoft's own Python clients (MSAL and msgraph-sdk).

Run by tests/emulator/python_sdk.rs. Input: one JSON object on stdin with
base_url, tenant, client_id, client_secret, mailbox, refresh_token, ca_file.
Output: one JSON object on stdout with what the clients saw; errors go to stderr
and end the script with a non-zero status.
"""

import asyncio
import json
import ssl
import sys
from urllib.parse import urlparse

import httpx
import msal
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.graph_request_adapter import options as sdk_options
from msgraph.generated.users.item.messages.item.reply.reply_post_request_body import (
    ReplyPostRequestBody,
)
from msgraph.generated.models.message import Message
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import (
    DeltaRequestBuilder,
)
from msgraph_core import GraphClientFactory

GRAPH = "https://graph.microsoft.com"


class FixedToken(AccessTokenProvider):
    """Hands the SDK a token MSAL got, for the emulator's host only."""

    def __init__(self, token: str, host: str) -> None:
        self.token = token
        self.validator = AllowedHostsValidator([host])

    async def get_authorization_token(self, uri, additional_authentication_context=None) -> str:
        return self.token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        return self.validator


def graph_client(base_url: str, token: str, ca_file: str) -> GraphServiceClient:
    host = urlparse(base_url).hostname
    auth = BaseBearerTokenAuthenticationProvider(FixedToken(token, host))
    # The SDK's own middleware (with its /users/me-token-to-replace → /me rewrite) on a
    # client that trusts the emulator's certificate.
    http = httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca_file))
    http = GraphClientFactory.create_with_default_middleware(client=http, options=sdk_options)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{base_url}/v1.0"
    return GraphServiceClient(request_adapter=adapter)


def tokens(cfg: dict) -> tuple[str, str, str]:
    app = msal.ConfidentialClientApplication(
        cfg["client_id"],
        client_credential=cfg["client_secret"],
        authority=f"{cfg['base_url']}/{cfg['tenant']}",
        instance_discovery=False,
        verify=cfg["ca_file"],
    )
    app_only = app.acquire_token_for_client(scopes=[f"{GRAPH}/.default"])
    if "access_token" not in app_only:
        raise SystemExit(f"client credentials failed: {app_only}")
    delegated = app.acquire_token_by_refresh_token(
        cfg["refresh_token"], scopes=[f"{GRAPH}/Mail.ReadWrite", f"{GRAPH}/Mail.Send"]
    )
    if "access_token" not in delegated:
        raise SystemExit(f"refresh token grant failed: {delegated}")
    return app_only["access_token"], delegated["access_token"], delegated.get("scope", "")


async def delta_round(builder, start=None) -> tuple[list, int, str]:
    """Pages one delta round until the deltaLink; returns items, pages and the link."""
    config = RequestConfiguration(
        query_parameters=DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
            select=["subject", "isRead", "receivedDateTime", "parentFolderId"]
        )
    )
    config.headers.add("Prefer", "odata.maxpagesize=2")
    page = await (builder.with_url(start).get() if start else builder.get(request_configuration=config))
    items, pages = list(page.value or []), 1
    while page.odata_next_link:
        page = await builder.with_url(page.odata_next_link).get(request_configuration=config)
        items.extend(page.value or [])
        pages += 1
    if not page.odata_delta_link:
        raise SystemExit("the last delta page has no deltaLink")
    return items, pages, page.odata_delta_link


async def main() -> None:
    cfg = json.load(sys.stdin)
    app_token, user_token, scope = tokens(cfg)
    mailbox = cfg["mailbox"]
    app = graph_client(cfg["base_url"], app_token, cfg["ca_file"])
    me = graph_client(cfg["base_url"], user_token, cfg["ca_file"])

    # delta() in the function-call form the SDK writes, with $select and a page size.
    inbox = app.users.by_user_id(mailbox).mail_folders.by_mail_folder_id("inbox")
    items, pages, delta_link = await delta_round(inbox.messages.delta)
    ids = [m.id for m in items]
    first = sorted(items, key=lambda m: m.subject or "")[0]

    # Read one message whole.
    message = await app.users.by_user_id(mailbox).messages.by_message_id(first.id).get()

    # Mark it read; the next round carries it as a partial item.
    await app.users.by_user_id(mailbox).messages.by_message_id(first.id).patch(Message(is_read=True))
    updated, _, _ = await delta_round(inbox.messages.delta, delta_link)

    # Reply with the delegated token, through /me.
    await me.me.messages.by_message_id(first.id).reply.post(
        ReplyPostRequestBody(comment="Thanks, we are on it.")
    )

    print(
        json.dumps(
            {
                "delegated_scope": scope,
                "delta_pages": pages,
                "delta_messages": len(items),
                "distinct_ids": len(set(ids)),
                "subjects": sorted(m.subject for m in items),
                "read_id": message.id,
                "read_subject": message.subject,
                "read_body_type": str(message.body.content_type.value) if message.body else None,
                "read_from": message.from_.email_address.address if message.from_ else None,
                "updated": [
                    {"id": m.id, "is_read": m.is_read, "subject": m.subject} for m in updated
                ],
                "replied_to": first.id,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
