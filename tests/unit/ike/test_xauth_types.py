"""draft-beaulieu-ike-xauth-02 sections 6.2 and 6.3: XAUTH-TYPE per request/reply pair.

Generic requests carry no XAUTH-TYPE and no XAUTH-CHALLENGE; a RADIUS-CHAP request (type 1)
carries a challenge, and our client answers XAUTH-USER-PASSWORD with the RADIUS CHAP-Password
(RFC 2865 section 5.3: Identifier, then MD5(Identifier || password || challenge), RFC 1994
section 4.1), so the gateway never sees the password. The reply's type must be the request's.
The gateway asks only tunvpn peers (our vendor ID) for RADIUS-CHAP; others get Generic.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers.ike_pair import Pair, client_config, connect, gateway_config
from tunvpn.config.credentials import UserTable
from tunvpn.ike import events as ev
from tunvpn.ike.constants import XauthType
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.transaction import CHAP_CHALLENGE_LEN, CHAP_PASSWORD_LEN, chap_password


def test_chap_password_layout_known_answer() -> None:
    # MD5(0x2a || "alice-secret" || 00 01 .. 0f), the Identifier in front (RFC 2865 5.3)
    value = chap_password(0x2A, b"alice-secret", bytes(range(16)))
    assert value.hex() == "2a" + "01947db0db39b729aeb6b24ac6ba5bb7"
    assert len(value) == CHAP_PASSWORD_LEN


def login(pair: Pair, password: str) -> ev.XauthRequested:
    sa_id = connect(pair, "main", xauth=True)
    [asked] = pair.client.of(ev.XauthRequested)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password=password)
    pair.run()
    return asked


def test_a_tunvpn_client_answers_radius_chap_and_the_password_stays_on_it() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True, xauth_chap=True))
    asked = login(pair, "s3cret")
    assert asked.xauth_type == XauthType.RADIUS_CHAP
    assert asked.challenge is not None and len(asked.challenge) == CHAP_CHALLENGE_LEN
    [creds] = pair.gateway.of(ev.XauthCredentials)
    assert creds.password is None and creds.chap is not None
    identifier, challenge, response = creds.chap
    assert challenge == asked.challenge
    assert response == hashlib.md5(bytes([identifier]) + b"s3cret" + challenge).digest()
    users = UserTable({"alice": b"s3cret"})
    assert users.check_chap("alice", identifier, challenge, response)
    assert not UserTable({"alice": b"other"}).check_chap("alice", identifier, challenge, response)
    assert "s3cret" not in repr(creds) and response.hex() not in repr(creds)


def test_fresh_challenges_per_login() -> None:
    challenges = set()
    for _ in range(3):
        pair = Pair(client_config(), gateway_config(require_xauth=True, xauth_chap=True))
        challenges.add(login(pair, "pw").challenge)
    assert len(challenges) == 3


def test_a_standard_client_is_asked_with_generic() -> None:
    """No tunvpn vendor ID (vpnc, strongSwan): no XAUTH-TYPE, no challenge, the password."""
    pair = Pair(client_config(tunvpn_extensions=False), gateway_config(require_xauth=True, xauth_chap=True))
    asked = login(pair, "s3cret")
    assert asked.xauth_type == XauthType.GENERIC and asked.challenge is None
    [creds] = pair.gateway.of(ev.XauthCredentials)
    assert creds.password == "s3cret" and creds.chap is None


def test_without_xauth_chap_even_our_client_gets_generic() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    assert login(pair, "s3cret").xauth_type == XauthType.GENERIC
    assert pair.gateway.of(ev.XauthCredentials)[0].password == "s3cret"


def test_a_reply_of_another_type_is_refused_with_a_message() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True, xauth_chap=True))
    sa_id = connect(pair, "main", xauth=True)
    # a client that answers a RADIUS-CHAP request as if it were Generic (type 0, the password)
    [ex] = [e for e in pair.client.engine.get_sa(sa_id).exchanges.values() if e.state == "await-user"]
    ex.tx.xauth_type = int(XauthType.GENERIC)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="s3cret")
    pair.run()
    assert not pair.gateway.of(ev.XauthCredentials)  # never reaches the plugins
    [done] = pair.client.of(ev.XauthCompleted)
    assert not done.success
    assert pair.client.of(ev.IkeSADeleted)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"challenge": b"x" * 16}, "must not be sent with XAUTH-TYPE Generic"),
        ({"xauth_type": XauthType.RADIUS_CHAP}, "needs a challenge"),
        (
            {"xauth_type": XauthType.RADIUS_CHAP, "challenge": b"c", "fields": ("user_name", "passcode")},
            "password",
        ),
        ({"xauth_type": XauthType.OTP}, "OTP is not implemented"),
    ],
)
def test_requests_the_draft_forbids_are_refused_locally(kwargs: dict, error: str) -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    connect(pair, "main", xauth=True)
    gw_sa = pair.gateway.of(ev.Phase1Established)[0].sa_id
    with pytest.raises(LocalProtocolError, match=error):
        pair.gateway.engine.xauth_request(gw_sa, pair.now, **kwargs)


def test_the_client_engine_will_not_answer_types_it_does_not_implement() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    sa_id = connect(pair, "main", xauth=True)
    [ex] = [e for e in pair.client.engine.get_sa(sa_id).exchanges.values() if e.state == "await-user"]
    ex.tx.xauth_type = int(XauthType.SKEY)  # as if the request had said S/KEY
    with pytest.raises(LocalProtocolError, match="XAUTH-TYPE 3: not implemented"):
        pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="pw")
