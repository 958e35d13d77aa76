"""The policy (domain.access.authorize), exhaustively: every action for every kind of principal, in and out of
its organisation, on assigned and unassigned interviews."""

from __future__ import annotations

import itertools

import pytest

from domain.access import (
    ADMIN,
    ADMIN_SCOPE,
    ANONYMOUS,
    API_KEY_SCOPES,
    HR,
    INTERVIEWER,
    ORG_LEVEL,
    Action,
    Decision,
    Principal,
    Resource,
    authorize,
)

A = Action
ORG, OTHER = "org-a", "org-b"
ASSIGNED = Resource(ORG, "iv-1", ("u-ivy", "u-other"))
UNASSIGNED = Resource(ORG, "iv-2", ("u-other",))
FOREIGN = Resource(OTHER, "iv-3", ("u-ivy",))
INTERVIEW_ACTIONS = [A.INTERVIEW_READ, A.INTERVIEW_UPDATE, A.QUESTION_WRITE, A.INTERVIEW_JOIN, A.TOKEN_MINT,
                     A.TOKEN_REVOKE, A.TRANSCRIPT_READ, A.ANALYSIS_READ, A.ANALYSIS_WRITE]
PERSON_ONLY = {A.SELF_READ, A.INTERVIEW_JOIN}
WHIP = {A.WHIP_JOIN, A.WHIP_LEAVE, A.CONSENT}  # participants only
ADMIN_ONLY = {A.USER_MANAGE, A.APIKEY_MANAGE, A.AUDIT_READ, A.ORG_MANAGE}
INTERVIEWER_MAY = {A.SELF_READ, A.INTERVIEW_READ, A.QUESTION_WRITE, A.INTERVIEW_JOIN,
                   A.TRANSCRIPT_READ, A.ANALYSIS_READ}

admin = Principal.user("u-admin", ORG, ADMIN)
hr = Principal.user("u-hr", ORG, HR)
ivy = Principal.user("u-ivy", ORG, INTERVIEWER)
candidate = Principal.participant("p-1", ORG, "candidate", "iv-1", "jti-1")


@pytest.mark.parametrize("action", list(Action))
def test_public_is_for_everyone_and_nothing_else_is_for_nobody(action: Action) -> None:
    for p in (ANONYMOUS, admin, candidate):
        if action is A.PUBLIC:
            assert authorize(p, action) is Decision.ALLOW
    if action is not A.PUBLIC:
        for resource in (ORG_LEVEL, ASSIGNED, FOREIGN):
            assert authorize(ANONYMOUS, action, resource) is Decision.UNAUTHENTICATED


@pytest.mark.parametrize(("role", "action"), list(itertools.product((ADMIN, HR, INTERVIEWER),
                                                                     set(Action) - {A.PUBLIC})))
def test_users_by_role(role: str, action: Action) -> None:
    user = Principal.user("u-ivy", ORG, role)
    if action in WHIP:
        may = False
    elif role == ADMIN:
        may = True
    elif role == HR:
        may = action not in ADMIN_ONLY
    else:
        may = action in INTERVIEWER_MAY
    on_org = authorize(user, action)
    assert on_org is (Decision.ALLOW if may else Decision.DENY)
    # Another organisation's resource is hidden (404), whatever the role and the action.
    assert authorize(user, action, FOREIGN) is Decision.HIDE
    assert authorize(Principal.user("u-ivy", OTHER, role), action, ASSIGNED) is Decision.HIDE


@pytest.mark.parametrize("action", INTERVIEW_ACTIONS)
def test_interviewers_see_only_the_interviews_they_are_assigned_to(action: Action) -> None:
    assigned, unassigned = authorize(ivy, action, ASSIGNED), authorize(ivy, action, UNASSIGNED)
    if action in INTERVIEWER_MAY:
        assert (assigned, unassigned) == (Decision.ALLOW, Decision.HIDE)
    else:
        assert (assigned, unassigned) == (Decision.DENY, Decision.DENY)
    # hr and admin: every interview of their organisation
    for p in (hr, admin):
        assert authorize(p, action, UNASSIGNED) is Decision.ALLOW


@pytest.mark.parametrize("action", sorted(set(Action) - {A.PUBLIC}))
def test_participants_only_join_and_leave_their_own_room(action: Action) -> None:
    own = authorize(candidate, action, Resource(interview_id="iv-1"))
    assert own is (Decision.ALLOW if action in WHIP else Decision.DENY)
    assert authorize(candidate, action, Resource(interview_id="iv-2")) is Decision.DENY
    assert authorize(candidate, action, FOREIGN) is Decision.HIDE


@pytest.mark.parametrize("action", sorted(set(Action) - {A.PUBLIC}))
def test_api_keys_have_exactly_their_scopes(action: Action) -> None:
    keyable = action not in PERSON_ONLY | WHIP
    assert (action.value in API_KEY_SCOPES) is keyable
    full = Principal.api_key("k1", ORG, {ADMIN_SCOPE})
    scoped = Principal.api_key("k2", ORG, {action.value})
    other = Principal.api_key("k3", ORG, {s for s in API_KEY_SCOPES if s not in (action.value, ADMIN_SCOPE)})
    expected = Decision.ALLOW if keyable else Decision.DENY
    assert authorize(full, action, UNASSIGNED) is expected
    assert authorize(scoped, action, UNASSIGNED) is expected
    assert authorize(other, action, UNASSIGNED) is Decision.DENY
    assert authorize(full, action, FOREIGN) is Decision.HIDE


def test_a_principal_of_unknown_kind_or_role_gets_nothing() -> None:
    for p in (Principal("robot", ORG, ADMIN, "r"), Principal.user("u", ORG, "superuser")):
        assert all(authorize(p, a) is Decision.DENY for a in set(Action) - {A.PUBLIC})
