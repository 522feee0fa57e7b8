"""Pluggable providers: where a service lives (domains) and who the caller is (auth).

Domains: :class:`StaticDomains` (a fixed map) and :class:`CsdsDomains` (the Domain API, cached,
single flight, stale-if-error). Auth: :class:`StaticBearer`, :class:`AppKeyAuth` (the Server
Chat API's ``LivePerson appKey=``), :class:`UserLogin`, :class:`AppLogin`,
:class:`ClientCredentialsLogin` (the Login Service, with keepalive), :class:`OAuth1Auth` (RFC 5849
request signing, form bodies included: a :class:`BodySigningAuth`),
:class:`SentinelClientCredentials` (OAuth2) and :class:`ConsumerJwt`
(the Messaging Window API's consumer token). Providers make their own calls through
:class:`ProviderHttp`: the engine's retry schedule without the auth middleware.
"""

from ._http import ProviderHttp, ProviderResponse
from .appkey import AppKeyAuth
from .auth import AuthProvider, BodySigningAuth, Credentials, StaticBearer
from .consumer import ConsumerJwt
from .csds import CsdsDomains
from .domains import DomainProvider, StaticDomains, validate_host
from .jwt import jwt_expiry
from .login import AppLogin, ClientCredentialsLogin, LoginServiceAuth, LoginSession, UserLogin
from .oauth1 import OAuth1Auth, OAuth1Signer
from .oauth2 import SentinelClientCredentials

__all__ = [
    "AppKeyAuth",
    "AppLogin",
    "AuthProvider",
    "BodySigningAuth",
    "ClientCredentialsLogin",
    "ConsumerJwt",
    "Credentials",
    "CsdsDomains",
    "DomainProvider",
    "LoginServiceAuth",
    "LoginSession",
    "OAuth1Auth",
    "OAuth1Signer",
    "ProviderHttp",
    "ProviderResponse",
    "SentinelClientCredentials",
    "StaticBearer",
    "StaticDomains",
    "UserLogin",
    "jwt_expiry",
    "validate_host",
]
