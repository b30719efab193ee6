"""YAML rules: what each condition and action compiles to, that the compiled rules decide like the
hand-written policies they stand for, and that every error names the YAML line and column."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from rbee.decisions import Decision, Queue
from rbee.errors import PolicyError
from rbee.policy import load_file, load_source
from rbee.policy.cases import describe, load_cases, run_case
from rbee.policy.rules import compile_rules, is_rules_file, load_rules
from rbee.wire.queen import JobView, Snapshot, TenantView

from .cluster import cluster, hive, job, worker

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
TWINS = Path(__file__).parent / "rules"


def _rule(condition: str, action: str = "queue") -> str:
    return f"rules:\n  - condition: {condition}\n    action: {action}\n"


def _condition_line(text: str) -> str:
    """The generated ``if`` line of the first rule."""
    return next(
        line.strip() for line in compile_rules(text, "r.yaml").splitlines() if "if " in line
    )


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{model: smol}", 'if job.model == "smol" {'),
        ("{model: [a, b]}", 'if ["a", "b"].contains(job.model) {'),
        ("{model_contains: 70B}", 'if job.model.to_lower().contains("70b") {'),
        (
            "{model_contains: [70b, 34b]}",
            'if job.model.to_lower().contains("70b") || job.model.to_lower().contains("34b") {',
        ),
        ("{model_starts_with: llama}", 'if job.model.starts_with("llama") {'),
        ("{priority: batch}", 'if job.priority == "batch" {'),
        ("{tenant: 'no'}", 'if job.tenant == "no" {'),
        ("{tenant: no}", 'if job.tenant == "no" {'),
        ("{job_label: {gpu: 'yes'}}", 'if job.labels["gpu"] == "yes" {'),
        ("{prompt_tokens_over: 4096}", "if job.prompt_tokens > 4096 {"),
        ("{tokens_over: 8192}", "if job.prompt_tokens + job.max_tokens > 8192 {"),
        ("{tenant_over_quota: true}", "if tenant_over_quota(job.tenant) {"),
        ("{tenant_over_quota: false}", "if !tenant_over_quota(job.tenant) {"),
        ("{tenant_quota_below: 0.25}", "if tenant_remaining_quota(job.tenant) < 0.25 {"),
        ("{tenant_quota_below: 1}", "if tenant_remaining_quota(job.tenant) < 1 {"),
        (
            "{free_slots_below: 2}",
            "if workers.with_model(job.model).available().map(|w| w.slots_free).sum() < 2 {",
        ),
        (
            "{hive_label: {region: eu, gpu: a100}}",
            'if !hives.with_label("region", "eu").with_label("gpu", "a100").is_empty() {',
        ),
        ("{expr: 'job.max_tokens * 2 > 100'}", "if (job.max_tokens * 2 > 100) {"),
        (
            "{any: [{model: a}, {tenant: t, priority: batch}]}",
            'if job.model == "a" || (job.tenant == "t" && job.priority == "batch") {',
        ),
        ("{all: [{model: a}, {tenant: t}]}", 'if job.model == "a" && job.tenant == "t" {'),
        (
            "{not: {any: [{model: a}, {model: b}]}}",
            'if !(job.model == "a" || job.model == "b") {',
        ),
        ("{model: a, tenant: t}", 'if job.model == "a" && job.tenant == "t" {'),
        (
            "{model: a, model_contains: [x, y]}",
            'if job.model == "a" && (job.model.to_lower().contains("x") || '
            'job.model.to_lower().contains("y")) {',
        ),
        ("false", "if false {"),
    ],
)
def test_each_condition_compiles_to_its_expression(condition: str, expected: str) -> None:
    assert _condition_line(_rule(condition)) == expected


def test_a_condition_of_true_is_no_if() -> None:
    source = compile_rules(_rule("true", "{reject: closed}") + "default: queue\n", "r.yaml")
    assert "if " not in source.split("// the default")[0].split("// rule 1")[1]
    assert '    return reject("closed");' in source


def _body(text: str) -> list[str]:
    """The generated statements of rule 1, without the ``if`` line, the default and comments."""
    lines = compile_rules(text, "r.yaml").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    if "))
    end = next(i for i, line in enumerate(lines) if line == "    }" and i > start)
    return [line[8:] for line in lines[start + 1 : end]]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("queue", ['return queue("queued by rule 1");']),
        ("{queue: 'wait for {model}'}", ['return queue("wait for " + job.model);']),
        (
            "{reject: '{tenant} may not use {model} ({priority}, {rule})'}",
            [
                'return reject(job.tenant + " may not use " + job.model + " ("'
                ' + job.priority + ", rule 1)");'
            ],
        ),
        ("{reject: no}", ['return reject("no");']),
        ("{select: workers.last()}", ["return (workers.last());"]),
        (
            "{route: {}}",
            [
                "let pool1 = workers.with_model(job.model);",
                "let free1 = pool1.available();",
                "if !free1.is_empty() {",
                "    return free1.least_loaded();",
                "}",
                "if !pool1.is_empty() {",
                '    return queue("every worker for " + job.model + " is busy");',
                "}",
                'return reject("no worker serves " + job.model);',
            ],
        ),
        (
            "{route: {hive: [h1, h2], label: {region: eu}, device: cuda, min_vram_mb: 40000,"
            " min_vram_free_mb: 8000.5, pick: round_robin}}",
            [
                "let pool1 = workers.with_model(job.model)"
                '.filter(|w| ["h1", "h2"].contains(w.hive)).with_label("region", "eu")'
                '.filter(|w| w.device.starts_with("cuda")).filter(|w| w.total_vram_mb >= 40000)'
                ".with_capacity(8000.5);",
                "let free1 = pool1.available();",
                "if !free1.is_empty() {",
                "    return free1.round_robin();",
                "}",
                "if !pool1.is_empty() {",
                '    return queue("every worker for " + job.model + " that matches rule 1 is busy");',
                "}",
                'return reject("no worker for " + job.model + " matches rule 1");',
            ],
        ),
        (
            "{route: {hive: h1, pick: first, if_busy: next, if_none: {reject: none}}}",
            [
                'let pool1 = workers.with_model(job.model).on_hive("h1");',
                "let free1 = pool1.available();",
                "if !free1.is_empty() {",
                "    return free1.first();",
                "}",
                "if pool1.is_empty() {",
                '    return reject("none");',
                "}",
            ],
        ),
        (
            "{route: {if_busy: spawn, if_none: next}}",
            [
                "let pool1 = workers.with_model(job.model);",
                "let free1 = pool1.available();",
                "if !free1.is_empty() {",
                "    return free1.least_loaded();",
                "}",
                "if !pool1.is_empty() {",
                "    let hosts2 = hives;",
                "    if !hosts2.is_empty() {",
                "        let having2 = hosts2.with_model(job.model);",
                "        if !having2.is_empty() {",
                "            return spawn(having2.least_loaded(), job.model);",
                "        }",
                "        return spawn(hosts2.least_loaded(), job.model);",
                "    }",
                '    return reject("no hive is online to start " + job.model);',
                "}",
            ],
        ),
        (
            "{route: {if_busy: next, if_none: next}}",
            [
                "let pool1 = workers.with_model(job.model);",
                "let free1 = pool1.available();",
                "if !free1.is_empty() {",
                "    return free1.least_loaded();",
                "}",
            ],
        ),
        (
            "{spawn: {hive: [big], label: {gpu: a100}, min_vram_free_mb: 40000, device: 'cuda:1',"
            " pick: most_vram_free, prefer_model_files: false, if_none: queue}}",
            [
                'let hosts1 = hives.filter(|h| ["big"].contains(h.name)).with_label("gpu", "a100")'
                ".with_capacity(40000);",
                "if !hosts1.is_empty() {",
                '    return spawn(hosts1.most_vram_free(), job.model, "cuda:1");',
                "}",
                'return queue("queued by rule 1");',
            ],
        ),
        (
            "{spawn: {label: {region: eu}, if_none: next}}",
            [
                'let hosts1 = hives.with_label("region", "eu");',
                "if !hosts1.is_empty() {",
                "    let having1 = hosts1.with_model(job.model);",
                "    if !having1.is_empty() {",
                "        return spawn(having1.least_loaded(), job.model);",
                "    }",
                "    return spawn(hosts1.least_loaded(), job.model);",
                "}",
            ],
        ),
    ],
)
def test_each_action_compiles_to_its_statements(action: str, expected: list[str]) -> None:
    assert _body(_rule("{model: m}", action)) == expected


def test_the_whole_file_compiles_to_one_readable_function() -> None:
    text = (
        "description: Two rules.\n"
        "rules:\n"
        "  - name: batch waits\n"
        "    condition: {priority: batch}\n"
        "    action: {queue: batch jobs wait}\n"
        "default: {reject: closed}\n"
    )
    assert compile_rules(text, "conf/mine.yaml") == (
        "// Compiled from mine.yaml by rbee: edit the rules, not this file.\n"
        "// Two rules.\n"
        "fn schedule_job(job, workers, hives) {\n"
        '    // rule 1 "batch waits" (line 3)\n'
        '    if job.priority == "batch" {\n'
        '        return queue("batch jobs wait");\n'
        "    }\n"
        "    // the default (line 6)\n"
        '    return reject("closed");\n'
        "}\n"
    )
    assert load_source(compile_rules(text, "mine.yaml"), "mine.rhai").schedule(
        job(priority="batch"), Snapshot()
    ) == Queue(("mine.rhai queued: batch jobs wait (line 6)",))


# --- the compiled rules decide like the hand-written policies ---------------------------------

STEMS = sorted(p.stem for p in TWINS.glob("*.yaml"))


def test_every_twin_has_its_shipped_policy() -> None:
    assert len(STEMS) >= 6
    assert all((ROOT / "policies" / f"{stem}.rhai").exists() for stem in STEMS)


@pytest.mark.parametrize("stem", STEMS)
def test_a_twin_passes_the_cases_of_its_policy(stem: str) -> None:
    policy = load_file(TWINS / f"{stem}.yaml")
    results = [run_case(policy, c, s) for c, s in load_cases(CASES / f"{stem}.toml")]
    assert len(results) >= 4
    assert [f"{r.name}: {r.problem}" for r in results if not r.passed] == []


def _outcome(decision: Decision) -> str:
    if isinstance(decision, Queue):
        return "queue: " + decision.reasons[-1].split(" queued: ")[1].rsplit(" (line ", 1)[0]
    return describe(decision)


def _snapshots() -> list[Snapshot]:
    tenants = (
        TenantView(name="full", requests=10, rpm=10),
        TenantView(name="low", requests=8, rpm=10),
    )
    # cluster(50, 5): every worker of model-0 has no free slot.
    busy = cluster(50, 5)
    return [
        msgspec.structs.replace(cluster(40), tenants=tenants),
        msgspec.structs.replace(busy, tenants=tenants),
        cluster(7, 2),
        Snapshot(workers=(), hives=busy.hives),
        Snapshot(
            workers=(worker("big", "llama-70b", total_vram_mb=81920.0, free=1),),
            hives=(hive("h1", vram=81920, models=("llama-70b",)),),
        ),
        Snapshot(),
    ]


def _jobs() -> list[JobView]:
    models = ["model-0", "model-1", "model-2", "model-9", "llama-70b", "Qwen-32B"]
    return [
        job(model, priority=priority, tenant=tenant, prompt_tokens=tokens)
        for model in models
        for priority in ("interactive", "batch")
        for tenant in ("", "full", "low")
        for tokens in (10, 9000)
    ]


@pytest.mark.parametrize("stem", STEMS)
def test_a_twin_decides_like_its_policy_on_the_test_clusters(stem: str) -> None:
    twin = load_file(TWINS / f"{stem}.yaml")
    original = load_file(ROOT / "policies" / f"{stem}.rhai")
    compared = 0
    for snapshot in _snapshots():
        for j in _jobs():
            try:
                want = _outcome(original.schedule(j, snapshot))
            except PolicyError as err:
                want = err.message
            try:
                got = _outcome(twin.schedule(j, snapshot))
            except PolicyError as err:
                got = err.message
            assert got == want, (stem, j, snapshot)
            compared += 1
    assert compared == 6 * 72


def test_reasons_name_the_lines_of_the_yaml() -> None:
    text = (
        "rules:\n"
        "  - name: eu\n"
        "    condition: {tenant: acme}\n"
        "    action:\n"
        "      route:\n"
        "        label: {region: eu}\n"
    )
    snap = Snapshot(workers=(worker("a", labels={"region": "eu"}), worker("b")))
    decision = load_rules(text, "r.yaml").schedule(job(tenant="acme"), snap)
    assert decision.reasons == (
        "line 5: with_model() kept 2 of 2 workers",
        "line 5: with_label() kept 1 of 2 workers",
        "line 5: available() kept 1 of 1 workers",
        "line 5: least_loaded() chose worker a",
        "r.yaml chose worker a (line 5)",
    )


# --- errors at the YAML's line and column -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - name: a\n   condition: true\n",
            "3:4: syntax error: expected <block end>, but found '<block mapping start>'",
        ),
        (
            "rules: []\ndefualt: queue\n",
            "2:1: name error: unknown key 'defualt' in the rules file (did you mean 'default'?);"
            " known: rules, default, description",
        ),
        ("description: x\n", "1:1: name error: the rules file needs 'rules' (a list of rules)"),
        ("- a\n", "1:1: type error: the rules file must be a mapping, not a list"),
        ("rules: {a: 1}\n", "1:8: type error: 'rules' must be a list, not a mapping"),
        (
            _rule("{modle: smol}"),
            "2:17: name error: unknown key 'modle' in the condition of rule 1",
        ),
        (_rule("{model: {a: b}}"), "2:24: type error: 'model' in rule 1 must be a string, not a"),
        (_rule("{model: []}"), "2:24: value error: 'model' in rule 1 is an empty list"),
        (
            _rule("{priority: urgent}"),
            "2:27: value error: 'priority' in rule 1 must be one of interactive, batch, not 'urgent'",
        ),
        (
            _rule("{tokens_over: lots}"),
            "2:30: type error: 'tokens_over' in rule 1 must be a whole number, not str 'lots'",
        ),
        (
            _rule("{tokens_over: -3}"),
            "2:30: value error: 'tokens_over' in rule 1 must be 0 or more",
        ),
        (
            _rule("{tenant_quota_below: 2}"),
            "2:37: value error: 'tenant_quota_below' in rule 1 is a",
        ),
        (
            _rule("{tenant_over_quota: maybe}"),
            "2:36: type error: 'tenant_over_quota' in rule 1 must",
        ),
        (_rule("{job_label: gpu}"), "2:28: type error: 'job_label' in rule 1 must be a mapping"),
        (_rule("{any: []}"), "2:22: type error: 'any' in rule 1 must be a non-empty list"),
        (_rule("{}"), "2:16: value error: the condition of rule 1 is empty (write `true`"),
        (_rule("~"), "2:16: type error: the condition of rule 1 must be a mapping, not nothing"),
        ("rules:\n  - condition: true\n", "2:5: name error: rule 1 needs 'action'"),
        (
            _rule("true", "{queue: a, reject: b}"),
            "3:13: value error: an action is exactly one of route, spawn, queue, reject, select,"
            " here 2",
        ),
        (_rule("true", "wait"), "3:13: value error: an action must be one of route, spawn, queue"),
        (_rule("true", "next"), "3:13: value error: an action must be one of route, spawn, queue"),
        (
            _rule("true", "{reject: 'no {gpu}'}"),
            "3:22: name error: unknown placeholder {gpu} in the reason",
        ),
        (
            "rules: []\ndefault:\n  route: {if_none: next}\n",
            "3:20: value error: 'next' in the default: no rule comes after it",
        ),
        (
            "rules: []\ndefault:\n  route: {pick: fastest}\n",
            "3:17: value error: 'pick' of 'route' must be one of least_loaded, first,",
        ),
        (
            "rules: []\ndefault:\n  spawn: {pick: first}\n",
            "3:17: value error: 'pick' of 'spawn' must be one of least_loaded, most_vram_free,",
        ),
        (
            "rules: []\ndefault:\n  route: {hives: a}\n",
            "3:11: name error: unknown key 'hives' in 'route' in the default (did you mean 'hive'?)",
        ),
        (
            "rules:\n  - &r {condition: true, action: queue}\n  - *r\n",
            "2:5: syntax error: anchors and aliases are not supported in rules",
        ),
        (
            "rules:\n  - condition: true\n    condition: false\n    action: queue\n",
            "3:5: syntax error: 'condition' is given twice in rule 1",
        ),
        ("rules: !!set {a}\n", "1:8: syntax error: tag tag:yaml.org,2002:set is not supported"),
        (
            "rules:\n  - condition:\n      expr: !job.tenant\n    action: queue\n",
            "3:13: syntax error: YAML reads !job.tenant as a tag: quote a value that starts with",
        ),
        (
            _rule("{expr: job.model == }"),
            "2:23: syntax error: unexpected ')', expected '!', '(', '-', '['",
        ),
        (
            _rule("{expr: 'job.modle == \"x\"'}"),
            "2:28: name error: no object has a field 'modle' (did you mean 'model'?)",
        ),
        (
            'rules:\n  - condition:\n      expr: |\n        job.model == "a" &&\n'
            "          job.prompt_tokens >< 3\n    action: queue\n",
            "5:30: syntax error: unexpected '<'",
        ),
        (
            _rule("true", "{select: 'workers.frist()'}"),
            "3:31: name error: unknown method frist() (did you mean 'first'?)",
        ),
        (
            _rule("true", "{select: 'workers.first()); (1'}"),
            "3:22: syntax error: 'select' in rule 1 must be one expression",
        ),
        (
            _rule("{tokens_over: 99999999999999999999999}"),
            "2:17: integer 99999999999999999999999 is too large",
        ),
        ("rules: [] # \u202e\n", "1:13: character U+202E is not allowed in a policy"),
        ("rules: []\n# a \ufffe\n", "2:5: syntax error: character U+FFFE is not allowed in YAML"),
    ],
)
def test_an_error_names_the_yaml_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_rules(text, "r.yaml")
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"r.yaml:{expected}"), first
    line, column = (int(x) for x in expected.split(":")[:2])
    assert (caught.value.line, caught.value.column) == (line, column)
    assert caught.value.source_line == text.splitlines()[line - 1]


def test_an_error_shows_the_yaml_line_with_a_caret() -> None:
    with pytest.raises(PolicyError) as caught:
        load_rules(_rule("{priority: urgent}"), "r.yaml")
    assert str(caught.value).splitlines() == [
        "r.yaml:2:27: value error: 'priority' in rule 1 must be one of interactive, batch,"
        " not 'urgent'",
        "      - condition: {priority: urgent}",
        "                              ^",
    ]


def test_an_empty_file_is_one_line() -> None:
    with pytest.raises(PolicyError, match=r"^r.yaml: name error: the rules file is empty"):
        load_rules("# nothing\n", "r.yaml")


def test_a_runtime_error_names_the_yaml() -> None:
    policy = load_rules(_rule("true", "{select: 'workers.with_model(\"x\").first()'}"), "r.yaml")
    with pytest.raises(PolicyError) as caught:
        policy.schedule(job(), Snapshot(workers=(worker("a"),)))
    assert str(caught.value).splitlines()[0] == (
        "r.yaml:3:14: result error: schedule_job returned nothing: first() at line 3 found"
        " nothing: the list was empty"
    )
    assert caught.value.source_line == "    action: {select: 'workers.with_model(\"x\").first()'}"


def test_an_expression_that_is_not_a_bool_fails_at_run_time_on_its_rule() -> None:
    policy = load_rules("rules:\n  - condition: {expr: job.model}\n    action: queue\n", "r.yaml")
    with pytest.raises(PolicyError, match=r"^r.yaml:2:\d+: type error"):
        policy.schedule(job(), Snapshot())


def test_rules_files_are_known_by_their_suffix() -> None:
    assert is_rules_file("a/rules.yaml")
    assert is_rules_file(Path("R.YML"))
    assert not is_rules_file("rules.rhai")
    assert not is_rules_file("yaml")
    text = _rule("true", "{reject: closed}")
    assert load_source(text, "x.yml").schedule(job(), Snapshot()).reason == "closed"  # type: ignore[union-attr]
    with pytest.raises(PolicyError, match="syntax error"):
        load_source(text, "x.rhai")


def test_the_example_in_the_docs_compiles() -> None:
    docs = (ROOT / "docs" / "policies.md").read_text()
    example = docs.split("## YAML rules", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = load_rules(example, "rules.yaml")
    snap = Snapshot(workers=(worker("eu", labels={"region": "eu"}), worker("us")))
    assert policy.schedule(job(tenant="acme"), snap).worker_id == "eu"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (70, r"^r.yaml:2:\d+: limit exceeded: conditions nested more than 64 deep"),
        (5000, r"^r.yaml: limit exceeded: the YAML is nested too deeply"),
    ],
)
def test_deep_nesting_is_a_limit(depth: int, expected: str) -> None:
    text = _rule("{not: " * depth + "true" + "}" * depth)
    with pytest.raises(PolicyError, match=expected):
        load_rules(text, "r.yaml")
