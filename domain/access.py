"""Who may do what: organisations, roles, principals, actions, and the one policy function `authorize`.

Pure (no I/O, no clock): the HTTP edge and WHIP resolve the caller into a `Principal` and the target into a
`Resource` (its organisation, and for an interview its assigned interviewers), then ask `authorize`. The answer is
one of four `Decision`s, which the edge maps to a status:

* `ALLOW`;
* `UNAUTHENTICATED` (401): nobody is signed in and the action is not public;
* `DENY` (403): an authenticated caller whose role, scopes or join token does not cover the action;
* `HIDE` (404): the resource belongs to another organisation, or is an interview an interviewer is not assigned
  to. Existence never leaks across organisations, and an interviewer cannot tell an unassigned interview from a
  missing one.

Roles (users of an organisation): `admin` may do everything in the organisation; `hr` everything but managing
users (HR lists them, to assign interviewers), API keys and the organisation's settings, and reading the audit
trail; `interviewer` only reads, joins, adds and asks questions in, and reads
the transcript and analysis of interviews whose `interviewers` hold their user id. API keys act in their
organisation with exactly their scopes (`admin` = every scope). Participants (a join token) may only join and
leave their own interview's room.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

DEFAULT_ORG = "default"  # the organisation of everything stored before organisations existed

ADMIN, HR, INTERVIEWER = "admin", "hr", "interviewer"
USER_ROLES = (ADMIN, HR, INTERVIEWER)
ADMIN_SCOPE = "admin"  # an API key scope that covers every action an API key may take


class Action(StrEnum):
    """One per route family. The value is also the API key scope that grants it."""

    PUBLIC = "public"  # pages, health, login: anyone
    SELF_READ = "self.read"
    INTERVIEW_READ = "interview.read"  # one interview, or the list (an interviewer's: those assigned)
    INTERVIEW_CREATE = "interview.create"
    INTERVIEW_UPDATE = "interview.update"  # start, complete, cancel
    QUESTION_WRITE = "question.write"
    INTERVIEW_JOIN = "interview.join"  # a signed-in user mints their own join token
    TOKEN_MINT = "token.mint"
    TOKEN_REVOKE = "token.revoke"
    TRANSCRIPT_READ = "transcript.read"
    ANALYSIS_READ = "analysis.read"
    ANALYSIS_WRITE = "analysis.write"  # run, record, and review (edit, confirm, reject) a scorecard
    ANALYSIS_EXPORT = "analysis.export"  # every interview's scores, for reporting (e.g. a Local Law 144 audit)
    CANDIDATE_READ = "candidate.read"
    CANDIDATE_WRITE = "candidate.write"
    CANDIDATE_ERASE = "candidate.erase"  # crypto-shredding: hr and admin
    CANDIDATE_EXPORT = "candidate.export"
    USER_READ = "user.read"  # the organisation's users (HR picks interviewers from them)
    USER_MANAGE = "user.manage"
    APIKEY_MANAGE = "apikey.manage"
    AUDIT_READ = "audit.read"
    ORG_MANAGE = "org.manage"  # the organisation's settings: jurisdiction policy, bias audit, contact, tone
    WHIP_JOIN = "whip.join"
    WHIP_LEAVE = "whip.leave"
    CONSENT = "consent"  # a participant gives or withdraws consent to the processing of their audio


class Decision(Enum):
    ALLOW = 200
    UNAUTHENTICATED = 401
    DENY = 403
    HIDE = 404


_INTERVIEWER_ACTIONS = frozenset({Action.SELF_READ, Action.INTERVIEW_READ,
                                  Action.QUESTION_WRITE, Action.INTERVIEW_JOIN, Action.TRANSCRIPT_READ,
                                  Action.ANALYSIS_READ})
_ADMIN_ONLY = frozenset({Action.USER_MANAGE, Action.APIKEY_MANAGE, Action.AUDIT_READ, Action.ORG_MANAGE})
_PARTICIPANT_ACTIONS = frozenset({Action.WHIP_JOIN, Action.WHIP_LEAVE, Action.CONSENT})
# What a user of each role may do at all (the interviewer's further limited to assigned interviews).
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    ADMIN: frozenset(Action) - _PARTICIPANT_ACTIONS - {Action.PUBLIC},
    HR: frozenset(Action) - _PARTICIPANT_ACTIONS - _ADMIN_ONLY - {Action.PUBLIC},
    INTERVIEWER: _INTERVIEWER_ACTIONS,
}
# Scopes an API key may hold: every action of an admin user but those that need a person (their own profile,
# their own join token).
API_KEY_SCOPES: tuple[str, ...] = (ADMIN_SCOPE, *sorted(
    a.value for a in ROLE_ACTIONS[ADMIN] - {Action.SELF_READ, Action.INTERVIEW_JOIN}))


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. `kind`: user | api_key | participant | anonymous. `subject` is the user id, key id or participant
    id; `role` the user's role, or for a participant its join role (candidate, interviewer, observer)."""

    kind: str
    org_id: str = ""
    role: str = ""
    subject: str = ""
    scopes: frozenset[str] = frozenset()
    interview_id: str = ""  # participants: the interview their join token is for
    token_id: str = ""  # participants: the join token's jti

    @classmethod
    def user(cls, user_id: str, org_id: str, role: str) -> Principal:
        return cls("user", org_id, role, user_id)

    @classmethod
    def api_key(cls, key_id: str, org_id: str, scopes: frozenset[str] | set[str]) -> Principal:
        return cls("api_key", org_id, "api_key", key_id, frozenset(scopes))

    @classmethod
    def participant(cls, participant_id: str, org_id: str, role: str, interview_id: str,
                    token_id: str = "") -> Principal:
        return cls("participant", org_id, role, participant_id, interview_id=interview_id, token_id=token_id)


ANONYMOUS = Principal("anonymous")


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is on. `org_id` None: the organisation's collection (create, list), always the caller's own.
    `interviewers` (user ids) and `interview_id` describe an interview."""

    org_id: str | None = None
    interview_id: str = ""
    interviewers: tuple[str, ...] = ()


ORG_LEVEL = Resource()


def authorize(principal: Principal, action: Action, resource: Resource = ORG_LEVEL) -> Decision:
    """The one policy: may `principal` take `action` on `resource`?"""
    if action is Action.PUBLIC:
        return Decision.ALLOW
    if principal.kind == "anonymous":
        return Decision.UNAUTHENTICATED
    if resource.org_id is not None and resource.org_id != principal.org_id:
        return Decision.HIDE
    if principal.kind == "participant":
        if action not in _PARTICIPANT_ACTIONS:
            return Decision.DENY
        return Decision.ALLOW if resource.interview_id == principal.interview_id else Decision.DENY
    if principal.kind == "api_key":
        if action in _PARTICIPANT_ACTIONS or action.value not in API_KEY_SCOPES:
            return Decision.DENY
        return Decision.ALLOW if (ADMIN_SCOPE in principal.scopes or action.value in principal.scopes) \
            else Decision.DENY
    if principal.kind != "user" or action not in ROLE_ACTIONS.get(principal.role, frozenset()):
        return Decision.DENY
    if principal.role == INTERVIEWER and resource.interview_id and principal.subject not in resource.interviewers:
        return Decision.HIDE
    return Decision.ALLOW
