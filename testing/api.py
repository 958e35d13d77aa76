"""The /api routes in-process (httpx ASGITransport), over a real store: what tests/test_api.py, test_openapi.py and
test_accounts.py share. Passwords hash with cheap argon2 parameters here (the production ones cost ~66 ms each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from adapters.accounts_store import AccountsStore
from adapters.auth import AccessTokens, Accounts, KeyRing, Passwords
from adapters.http_api import Api, api_routes, exception_handlers
from adapters.http_edge import Audit, AuditSink
from adapters.metrics import Metrics
from adapters.mongo import MongoStore
from adapters.rate_limits import RateLimits, Rates
from adapters.tokens import Revocations, TokenSigner
from domain.commands import InterviewService

ADMIN_KEY = "test-admin-key-0123456789"
TOKEN_SECRET = b"test-token-secret-0123456789abcdef"
FAST_PASSWORDS = {"time_cost": 1, "memory_kib": 1024, "parallelism": 1}


@dataclass
class InProcessApi:
    app: Starlette
    api: Api
    accounts: Accounts


async def api_app(store: MongoStore, service: InterviewService, data_dir: Path, *, audit: AuditSink | None = None,
                  entry_type: Any = None, rates: Rates | None = None, passwords: Passwords | None = None,
                  **api_options: Any) -> InProcessApi:
    """The API over `store` with `ADMIN_KEY`, a key ring under `data_dir`, loose rate limits unless `rates`, and
    cheap password hashing unless `passwords` (the benchmark passes the production `Passwords()`)."""
    accounts_store = AccountsStore(store.db)
    await accounts_store.create_indexes()
    limits = RateLimits(rates or Rates(login_account="100000/minute", login_address="100000/minute",
                                       token_mint="100000/minute", api_key="1000000/minute"))
    signer = TokenSigner(TOKEN_SECRET, revocations=Revocations(accounts_store))
    accounts = Accounts(accounts_store, AccessTokens(KeyRing(data_dir / "jwt_keys.json")), signer, limits,
                        admin_api_key=ADMIN_KEY, passwords=passwords or Passwords(**FAST_PASSWORDS))
    api = Api(service, accounts, signer, limits, Metrics(), Audit(audit, entry_type), **api_options)
    app = Starlette(routes=api_routes(api), exception_handlers=exception_handlers)
    return InProcessApi(app, api, accounts)
