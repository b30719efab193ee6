"""The queen's route table, from which `rbee.openapi` makes its ``GET /openapi.json``."""

from __future__ import annotations

from rbee.openapi import COMMON, STORE, STREAM, Query, Route, Routes, int_query
from rbee.wire import hive as wh
from rbee.wire import hosts as wo
from rbee.wire import openai as oa
from rbee.wire import queen as wq
from rbee.wire import ui as wu

__all__ = ["ROUTES"]

ROUTES: Routes = (
    COMMON
    | STORE
    | {
        ("GET", "/metrics"): Route("Prometheus metrics", media="text/plain"),
        ("POST", "/v1/heartbeat"): Route("A hive's report", body=wq.HiveHeartbeat, status=204),
        ("POST", "/v1/workers/{worker_id}/exited"): Route(
            "A hive reports a worker that ended", body=wq.WorkerExited, status=204
        ),
        ("POST", "/v1/jobs"): Route(
            "Submit a job (its stream at once with Accept: text/event-stream)",
            wq.JobAccepted,
            body=wq.JobRequest,
            status=202,
            stream=True,
        ),
        ("GET", "/v1/jobs"): Route(
            "Recent jobs, newest first",
            wq.JobList,
            query=(
                Query(
                    "state", {"enum": ["queued", "running", "completed", "failed", "cancelled"]}, ""
                ),
                int_query("limit", 1, 10_000, "how many"),
            ),
        ),
        ("GET", "/v1/jobs/{job_id}"): Route("One job's record", wq.JobInfo),
        ("GET", "/v1/jobs/{job_id}/stream"): Route(f"The job's stream: {STREAM}", stream=True),
        ("DELETE", "/v1/jobs/{job_id}"): Route(
            "Cancel a job; its record once it ended", wq.JobInfo
        ),
        ("GET", "/v1/decisions"): Route(
            "The last scheduling decisions",
            wq.DecisionList,
            query=(
                int_query("last", 1, 10_000, "how many"),
                Query("job_id", {"type": "string"}, ""),
            ),
        ),
        ("GET", "/v1/status"): Route("The queen's status", wq.QueenStatus),
        ("POST", "/v1/keys"): Route(
            "Create an API key", wq.KeyCreated, body=wq.KeyCreate, status=201
        ),
        ("GET", "/v1/keys"): Route("Every API key (never the keys themselves)", wq.KeyList),
        ("DELETE", "/v1/keys/{name}"): Route("Revoke an API key", wq.KeyInfo),
        ("GET", "/v1/models"): Route("The models served or stored (OpenAI)", oa.ModelList),
        ("POST", "/v1/chat/completions"): Route(
            "A chat completion (OpenAI); streamed when stream is true",
            oa.ChatCompletion,
            body=oa.ChatCompletionRequest,
            stream=True,
        ),
        ("POST", "/v1/completions"): Route(
            "A text completion (OpenAI); streamed when stream is true",
            oa.Completion,
            body=oa.CompletionRequest,
            stream=True,
        ),
        ("GET", "/v1/hives"): Route("Every hive heard from", wq.HiveList),
        ("POST", "/v1/hives"): Route(
            "Register a hive reached over SSH", wo.HostHive, body=wo.HiveAdd, status=201
        ),
        ("GET", "/v1/hives/{name}"): Route("A hive reached over SSH", wo.HostHive),
        ("DELETE", "/v1/hives/{name}"): Route("Stop and forget a hive", wo.HiveStopped),
        ("POST", "/v1/hives/{name}/trust"): Route(
            "Trust a hive's SSH host key", wo.HostKeyInfo, body=wo.HiveTrust
        ),
        ("POST", "/v1/hives/{name}/start"): Route(
            "Push rbee to the host and start its hive", wo.HiveStarted, stream=True
        ),
        ("POST", "/v1/hives/{name}/upgrade"): Route(
            "Push a new rbee and restart the hive", wo.HiveStarted, stream=True
        ),
        ("POST", "/v1/hives/{name}/stop"): Route("Stop a hive", wo.HiveStopped),
        ("GET", "/v1/hives/{name}/logs"): Route(
            "A hive's log (followed as a stream with follow=true)",
            wo.HiveLogs,
            stream=True,
            query=(
                int_query("lines", 1, 10_000, "how many of the last lines"),
                Query("follow", {"enum": ["0", "1", "true", "false"]}, "keep streaming new lines"),
            ),
        ),
        ("GET", "/v1/hives/{name}/models"): Route("The models in a hive's store", wh.ModelList),
        ("DELETE", "/v1/hives/{name}/models/{model}"): Route(
            "Remove a model from a hive's store", wh.ModelRemoved
        ),
        ("POST", "/v1/hives/{name}/models/pull"): Route(
            f"Install a model from the queen's store on a hive: {STREAM}",
            body=wq.ModelPullRequest,
            stream=True,
        ),
        ("GET", "/v1/workers"): Route("Every worker", wq.WorkerEntryList),
        ("POST", "/v1/workers"): Route(
            "Start a worker on a hive (201 once ready with wait, else 202)",
            wq.WorkerStatus,
            body=wq.WorkerSpawn,
            status=202,
            also=(201,),
        ),
        ("DELETE", "/v1/workers/{worker_id}"): Route("Retire a worker", wh.WorkerRetired),
        # The web page (rbee.queen.ui) and the routes only it uses.
        ("GET", "/ui"): Route("The web page", media="text/html"),
        ("GET", "/ui/{name}"): Route(
            "One of the web page's files (scripts, stylesheet)", media="text/javascript"
        ),
        ("POST", "/ui/login"): Route(
            "Sign the page in with a key: sets its HttpOnly session cookie",
            wu.UiSession,
            body=wu.UiLogin,
        ),
        ("POST", "/ui/logout"): Route("Clear the page's session cookie", status=204),
        ("GET", "/ui/session"): Route(
            "Who the page speaks as (kind none: not signed in)", wu.UiSession
        ),
        ("GET", "/v1/ui/events"): Route(
            f"The overview once a second (Overview events): {STREAM}", stream=True
        ),
        ("GET", "/v1/workers/{worker_id}/log"): Route(
            "The last lines of a worker's log", wh.WorkerLog
        ),
        ("POST", "/v1/hives/{name}/models/import"): Route(
            f"Import a GGUF file on a hive's host: {STREAM}", body=wu.ModelImport, stream=True
        ),
        ("GET", "/v1/policy"): Route(
            "The running policy (a file's source, or a built-in's name)", wu.PolicySource
        ),
        ("POST", "/v1/policy/check"): Route(
            "Whether a draft compiles, or where and why not", wu.PolicyCheck, body=wu.PolicyDraft
        ),
        ("POST", "/v1/policy/compile"): Route(
            "A draft in the policy language (YAML rules compiled)",
            wu.PolicyCompiled,
            body=wu.PolicyDraft,
        ),
        ("POST", "/v1/policy/preview"): Route(
            "A draft's and the running policy's decisions on sample jobs, on the live cluster",
            wu.PolicyPreview,
            body=wu.PolicyPreviewRequest,
        ),
        ("POST", "/v1/policy/replay"): Route(
            "A draft on the last logged decisions' jobs and snapshots",
            wu.PolicyReplay,
            body=wu.PolicyReplayRequest,
        ),
        ("POST", "/v1/policy/apply"): Route(
            "Make a draft the queen's policy (403 when it is locked)",
            wq.PolicyStatus,
            body=wu.PolicyDraft,
        ),
    }
)
