"""Best-of-N protocol with fake policy, reward models and judges (no model is loaded)."""

from __future__ import annotations

from collections import Counter

import pytest

from music.chat import ChatReply
from music.config import ChatModelConfig, EvalConfig
from music.evaluate.judge import combine_orders, judge_request, load_template, parse_verdict
from music.stages.best_of_n import choose_questions, game_failures, run_best_of_n, summarize

QUESTIONS = [{"question_id": i, "category": "x", "turns": [f"q{i} first", f"q{i} second"]} for i in range(3)]


class FakePolicy:
    """Candidate k of a context is 'ctx#k' + k words; identical inputs in one call are distinct samples."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, *, seed=0, max_new_tokens=None, temperature=None, desc=None):
        self.calls.append(conversations)
        seen = Counter()
        out = []
        for c in conversations:
            key = repr(c)
            k = seen[key]
            seen[key] += 1
            out.append(ChatReply(f"r{len(c)}#{k} " + "w " * ((k * 7 + seed) % 5), "stop"))
        return out


class LengthScorer:
    def __init__(self, sign=1.0):
        self.sign = sign

    def score(self, conversations):
        return [
            self.sign * len(c[-1]["content"]) + 0.001 * int(c[-1]["content"].split("#")[1].split()[0])
            for c in conversations
        ]


class Judge:
    def __init__(self, reply=None, favour=None):
        self.reply, self.favour, self.calls = reply, favour, 0

    def generate(self, conversations, **kw):
        self.calls += len(conversations)
        out = []
        for c in conversations:
            text = c[0]["content"]
            if self.favour is not None:  # prefers the conversation whose replies the `favour` scorer likes
                a = text.split("<conversation_a>")[1].split("</conversation_a>")[0]
                b = text.split("<conversation_b>")[1].split("</conversation_b>")[0]
                out.append(ChatReply("[[A]]" if len(a) * self.favour > len(b) * self.favour else "[[B]]", "stop"))
            else:
                out.append(ChatReply(self.reply, "stop"))
        return out


def bon_cfg(ns=(2, 4), turns=None, graded=False) -> EvalConfig:
    """The Best-of-N settings of these tests: 8-token candidates at temperature 0.7, a greedy 8-token judge whose
    verdict is generated and parsed (the label fakes have no `choose`), or graded (fakes with option_logprobs)."""
    return EvalConfig(
        bon_ns=list(ns),
        bon_turns=turns,
        seed=0,
        judge_constrained=False,
        bon_judge_graded=graded,
        policy=ChatModelConfig(max_new_tokens=8, temperature=0.7),
        judge=ChatModelConfig(max_new_tokens=8, temperature=0.0),
    )


def play(scorers, judge, ns=(2, 4), policy=None, graded=False, log=None):
    return run_best_of_n(QUESTIONS, scorers, policy or FakePolicy(), judge, bon_cfg(ns, graded=graded), log=log)


def test_candidates_are_sampled_once_per_context_and_reused():
    policy = FakePolicy()
    games = play(
        {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}, Judge(reply="[[C]]"), ns=(2, 4), policy=policy
    )
    turn1, turn2 = policy.calls
    assert len(turn1) == 3 * 4  # max(N) per question, shared by both RMs and all N
    # turn 2: one context per distinct turn-1 pick; each sampled max(N using it) times
    distinct = Counter(repr(c) for c in turn2)
    assert sum(distinct.values()) == len(turn2) and set(distinct.values()) <= {2, 4, 6, 8}
    for g in games:
        for rm in ("baseline", "music"):
            reply1 = g.conversations[rm][1]["content"]
            assert int(reply1.split("#")[1].split()[0]) < g.n  # picked among the first N only


def test_identical_picks_are_ties_without_the_judge():
    judge = Judge(reply="[[A]]")
    games = play({"baseline": LengthScorer(), "music": LengthScorer()}, judge)
    assert judge.calls == 0
    s = summarize(games)
    assert s["2"]["ties"] == s["2"]["n_identical"] == 3 and s["2"]["n_judge_calls"] == 0


def test_position_bias_cancels_and_an_unparsed_verdict_fails_its_game():
    scorers = {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}
    biased = summarize(play(scorers, Judge(reply="[[A]]")))
    row = biased["4"]
    assert row["wins"] == row["losses"] == 0 and row["n_inconsistent"] == row["n_games"] - row["n_identical"]
    assert row["verdict_a"] == row["n_judge_calls"] > 0
    games = play(scorers, Judge(reply="I think the first one"))
    junk = summarize(games)["4"]
    judged = junk["n_judge_calls"] // 2
    assert judged > 0 and junk["n_unparsed"] == junk["n_failed"] == judged  # failed, never a tie
    assert junk["failures"] == {"judge_unparsed": judged} and junk["ties"] == junk["n_games"] == junk["n_identical"]
    assert game_failures(games)["by_reason"]["judge_unparsed"]["count"] == sum(g.failure is not None for g in games)


def test_consistent_judge_decides_and_rates_have_intervals():
    scorers = {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}
    # the judge likes long conversations = the baseline RM's picks -> MUSIC loses every judged game
    row = summarize(play(scorers, Judge(favour=1.0)))["4"]
    judged = row["n_games"] - row["n_identical"]
    assert judged > 0 and row["losses"] == judged and row["wins"] == 0
    assert row["loss_ci_low"] < row["loss_rate"] <= row["loss_ci_high"]
    assert row["win_rate"] + row["tie_rate"] + row["loss_rate"] == pytest.approx(1.0)


def test_verdict_parsing_and_combination():
    assert parse_verdict("[[B]] because") == "B"
    assert parse_verdict("[[ C ]]") == "C"
    assert parse_verdict("[[A]] or [[B]]") is None and parse_verdict("") is None and parse_verdict(None) is None
    assert combine_orders("B", "A") == ("win", True)
    assert combine_orders("A", "B") == ("loss", True)
    assert combine_orders("A", "A") == ("tie", False)
    assert combine_orders("B", None) == ("tie", False)


def test_judge_prompt_keeps_braces_and_both_conversations():
    tpl = load_template()
    req = judge_request(
        tpl,
        [{"role": "user", "content": "q {x}"}, {"role": "assistant", "content": "AAA"}],
        [{"role": "user", "content": "q {x}"}, {"role": "assistant", "content": "BBB"}],
    )
    text = req[0]["content"]
    assert "q {x}" in text and text.index("AAA") < text.index("BBB") and "[[C]]" in text


def test_choose_questions_is_seeded():
    qs = [{"question_id": i, "turns": ["a", "b"]} for i in range(20)] + [{"question_id": 99, "turns": []}]
    a = choose_questions(qs, 8, seed=0)
    assert a == choose_questions(qs, 8, seed=0) != choose_questions(qs, 8, seed=1)
    assert len({q["question_id"] for q in a}) == 8 and 99 not in {q["question_id"] for q in a}
    with pytest.raises(ValueError, match="bon_prompts"):
        choose_questions(qs, 21, seed=0)


class FakeUser:
    """A user simulator: its message names the last assistant reply it saw (so it depends on the RM's pick)."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, *, seed=0, max_new_tokens=None, temperature=None, desc=None):
        self.calls.append(conversations)
        return [ChatReply(f"Tell me more about {c[-1]['content'].split()[0]}?", "stop") for c in conversations]


ONE_TURN = [{"prompt_id": f"p{i}", "turns": [f"p{i} opener"]} for i in range(2)]


def test_later_turns_are_written_by_the_user_simulator_from_each_conversation():
    user, policy = FakeUser(), FakePolicy()
    scorers = {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}
    games = run_best_of_n(
        ONE_TURN,
        scorers,
        policy,
        Judge(reply="[[C]]"),
        bon_cfg((2, 4), turns=3),
        user=user,
    )
    assert len(policy.calls) == 3 and len(user.calls) == 2  # user turns 2 and 3 are simulated
    for g in games:
        assert g.question_id in ("p0", "p1")
        for rm in ("baseline", "music"):
            conv = g.conversations[rm]
            assert [m["role"] for m in conv] == ["user", "assistant"] * 3
            assert conv[0]["content"].endswith("opener")
            for i in (2, 4):  # each simulated user turn follows this conversation's own previous pick
                assert conv[i]["content"] == f"Tell me more about {conv[i - 1]['content'].split()[0]}?"
    # the user model sees the conversation with roles swapped (the simulate stage's view)
    assert all(c[-1]["role"] == "user" for call in user.calls for c in call)


def test_more_turns_than_scripted_need_a_user_simulator():
    with pytest.raises(ValueError, match="user simulator"):
        run_best_of_n(
            ONE_TURN,
            {"baseline": LengthScorer(), "music": LengthScorer()},
            FakePolicy(),
            Judge(reply="[[C]]"),
            bon_cfg((2,), turns=2),
        )


def test_reward_models_are_scored_one_at_a_time():
    from music.stages.best_of_n import OneAtATime

    made = []

    def factory(rm, sign):
        def make():
            assert pool.name is None and pool.current is None  # the other RM was released first
            made.append(rm)
            return LengthScorer(sign)

        return make

    pool = OneAtATime({"baseline": factory("baseline", 1.0), "music": factory("music", -1.0)})
    games = run_best_of_n(
        QUESTIONS,
        pool,
        FakePolicy(),
        Judge(reply="[[C]]"),
        bon_cfg((2, 4)),
    )
    assert made == ["baseline", "music", "baseline"]  # 2 turns: alternating order, the last RM stays loaded
    assert pool.loads == 3 and len(games) == 6
    plain = run_best_of_n(
        QUESTIONS,
        {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)},
        FakePolicy(),
        Judge(reply="[[C]]"),
        bon_cfg((2, 4)),
    )
    assert [g.conversations for g in games] == [g.conversations for g in plain]  # same picks either way


# ---------------------------------------------------------------- protocol: judge prompt, win rates, seeds, figure
def test_judge_prompt_is_true_for_scripted_and_simulated_user_turns():
    tpl = load_template()
    assert "identical" not in tpl  # with bon_turns beyond the script, later user turns differ per conversation
    assert "start with the same user message" in tpl and "later user messages may differ" in tpl


def _games(outcomes: dict[str, list[str]], n=2):
    from music.stages.best_of_n import Game

    return [
        Game(q, n, {"baseline": [], "music": []}, outcome=o, rm_seed=s)
        for q, os in outcomes.items()
        for s, o in enumerate(os)
    ]


def test_win_rates_split_ties_and_have_bootstrap_intervals_over_prompts():
    outcomes = {f"p{i}": ["win", "tie"] if i < 6 else ["loss", "tie"] if i < 8 else ["tie", "tie"] for i in range(10)}
    row = summarize(_games(outcomes))["2"]
    assert (row["wins"], row["ties"], row["losses"], row["n_games"], row["n_prompts"]) == (6, 12, 2, 20, 10)
    assert row["win_rate_ties_half"] == pytest.approx((6 + 12 / 2) / 20)
    assert row["win_rate_decided"] == pytest.approx(6 / 8)
    assert row["win_rate_ties_half_ci_low"] < row["win_rate_ties_half"] < row["win_rate_ties_half_ci_high"]
    assert row["win_rate_decided_ci_low"] < row["win_rate_decided"] <= row["win_rate_decided_ci_high"]
    assert row["all_ties"] == 0
    tied = summarize(_games({f"p{i}": ["tie", "tie"] for i in range(4)}))["2"]
    assert tied["all_ties"] == 1 and tied["win_rate_ties_half"] == 0.5 and tied["win_rate_decided"] is None
    assert tied["win_rate_ties_half_ci_low"] == tied["win_rate_ties_half_ci_high"] == 0.5
    assert tied["win_rate_decided_ci_low"] is None and tied["boot_draws_without_decided_games"] == 4000


def test_the_figure_shows_the_win_rate_interval_and_says_when_every_game_tied():
    from music.reporting.plots import plot_best_of_n

    tied = {"judge": "j", "rm_seeds": 2, "by_n": summarize(_games({f"p{i}": ["tie", "tie"] for i in range(4)}))}
    texts = [t.get_text() for t in plot_best_of_n(tied).axes[0].texts]
    assert any("every game tied (8 games)" in t for t in texts)
    mixed = {"judge": "j", "by_n": summarize(_games({f"p{i}": ["win", "tie"] for i in range(4)}))}
    fig = plot_best_of_n(mixed)
    assert not any("every game tied" in t.get_text() for t in fig.axes[0].texts)
    assert any("(W + T/2)/N" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_every_training_seed_plays(tmp_path, monkeypatch):
    import json

    from music.config import Params, Paths
    from music.stages import best_of_n

    P = Params(
        paths=Paths(
            models=str(tmp_path / "models"),
            metrics=str(tmp_path / "m"),
            evaluation=str(tmp_path / "ev"),
            reports=str(tmp_path / "r"),
            cache=str(tmp_path / "c"),
        )
    )
    P.train.seeds = [0, 1]
    P.evaluate.bon_prompts, P.evaluate.bon_ns, P.evaluate.judge_constrained = 3, [2], False
    P.evaluate.bon_judge_check_pairs = 0  # no known pairs here
    for rm in ("baseline", "music"):
        for s in (0, 1):
            (tmp_path / "models" / rm / f"seed{s}").mkdir(parents=True)
            for name in ("config.json", "train_metrics.json"):
                (tmp_path / "models" / rm / f"seed{s}" / name).write_text("{}")
    loaded = []

    def fake_scorer(path, **kw):
        loaded.append(path.split("models/")[1])
        return LengthScorer(1.0 if "baseline" in path else -1.0)

    monkeypatch.setattr(best_of_n, "load_prompts", lambda source: QUESTIONS)
    monkeypatch.setattr(best_of_n, "make_chat", lambda cfg, cache, role=None: PolicyAndJudge())
    monkeypatch.setattr(best_of_n, "RewardScorer", fake_scorer)
    out = best_of_n.run(P)
    assert sorted(set(loaded)) == ["baseline/seed0", "baseline/seed1", "music/seed0", "music/seed1"]
    assert out["rm_seeds"] == 2 and out["by_n"]["2"]["n_games"] == 2 * 3 and out["by_n"]["2"]["n_prompts"] == 3
    games = [json.loads(line) for line in (tmp_path / "ev" / "best_of_n_games.jsonl").read_text().splitlines()]
    assert sorted({g["rm_seed"] for g in games}) == [0, 1]
    assert "seed s of the baseline RM against seed s of the MUSIC RM" in out["seeds"]


# ---------------------------------------------------------------- graded verdicts, the judge check, failures
class GradedJudge:
    """option_logprobs like a served or in-process judge: `bias` nats for position A whatever it reads, plus
    `skill` nats for the conversation whose last reply is longer (skill > 0) or shorter (< 0); `fail`: None."""

    def __init__(self, bias=2.0, skill=0.0, fail=False):
        self.bias, self.skill, self.fail, self.judged = bias, skill, fail, 0

    def option_logprobs(self, requests, options, *, prefix="[[", max_new_tokens=None, desc=None):
        self.judged += len(requests)
        out = []
        for r in requests:
            text = r[0]["content"]
            a = text.split("<conversation_a>")[1].split("</conversation_a>")[0]
            b = text.split("<conversation_b>")[1].split("</conversation_b>")[0]
            pref = self.bias + self.skill * (len(a) > len(b)) - self.skill * (len(b) > len(a))
            out.append(None if self.fail else {"A": -1.0, "B": -1.0 - pref, "C": -9.0})
        return out


class PolicyAndJudge(FakePolicy, GradedJudge):
    """One backend that samples the policy's candidates and judges (the stage shares one loaded model)."""

    def __init__(self, **kw):
        FakePolicy.__init__(self)
        GradedJudge.__init__(self, **kw)


def known(n: int, clusters: int | None = None):
    """n pairs with a known answer: the chosen reply is the longer one."""
    from music.schema import PreferencePair

    u = {"role": "user", "content": "q"}
    return [
        PreferencePair(
            [u, {"role": "assistant", "content": f"a long and careful answer {i}"}],
            [u, {"role": "assistant", "content": f"short {i}"}],
            {"pair_id": f"k{i}", "conversation_id": f"c{i % (clusters or n)}"},
        )
        for i in range(n)
    ]


def test_a_judge_that_always_answers_a_is_a_graded_tie_at_exactly_chance():
    from music.evaluate.judge import judge_check
    from music.reporting.report import best_of_n_sentence

    scorers = {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}
    judge = GradedJudge(bias=3.0)  # always "A", by 3 nats
    games = play(scorers, judge, graded=True)
    judged = [g for g in games if not g.identical]
    assert judged and all(g.margin == 0.0 and g.outcome == "tie" and g.verdicts == ["A", "A"] for g in judged)
    check, records = judge_check(judge, known(12), load_template())
    assert check["accuracy"] == 0.5 and check["ci_low"] == check["ci_high"] == 0.5 and check["at_chance"] == 1
    assert check["first_position_share"] == 1.0 and all(r["score"] == 0.5 for r in records)
    by_n = summarize(games, check)
    row = by_n["4"]
    assert row["win_rate_ties_half"] == 0.5 and row["judge_accuracy"] == 0.5 and row["judge_at_chance"] == 1
    sentence = best_of_n_sentence({"by_n": by_n, "judge_check": check})
    assert "uninformative" in sentence and "at chance" in sentence and "no difference" not in sentence


def test_a_graded_judge_with_skill_decides_and_its_accuracy_is_measured():
    from music.evaluate.judge import judge_check

    scorers = {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)}
    judge = GradedJudge(bias=3.0, skill=1.0)  # position bias larger than its skill: a label judge would tie
    row = summarize(play(scorers, judge, graded=True))["4"]
    judged = row["n_games"] - row["n_identical"]
    assert judged > 0 and row["losses"] == judged and row["verdict_b"] == 0  # always "A", yet graded decides
    assert summarize(play(scorers, Judge(reply="[[A]]")))["4"]["losses"] == 0  # the label rule voids it
    pairs = known(20, clusters=10)
    check, _ = judge_check(judge, pairs, load_template(), clusters=[p.meta["conversation_id"] for p in pairs])
    assert check["accuracy"] == 1.0 and check["at_chance"] == 0 and check["n_clusters"] == 10
    wrong, _ = judge_check(GradedJudge(skill=-1.0), known(20), load_template(), graded=True)
    assert wrong["accuracy"] == 0.0 and wrong["at_chance"] == 0
    label, _ = judge_check(Judge(favour=1.0), known(6), load_template(), graded=False, constrained=False)
    assert label["accuracy"] == 1.0


def _stage_params(tmp_path, pairs: int):
    from music.config import Params, Paths

    P = Params(
        paths=Paths(
            models=str(tmp_path / "models"),
            metrics=str(tmp_path / "m"),
            evaluation=str(tmp_path / "ev"),
            reports=str(tmp_path / "r"),
            cache=str(tmp_path / "c"),
            heldout=str(tmp_path / "heldout"),
        )
    )
    P.train.seeds = [0, 1]
    P.evaluate.bon_prompts, P.evaluate.bon_ns, P.evaluate.bon_judge_check_pairs = 3, [2, 4], pairs
    for rm in ("baseline", "music"):
        for s in (0, 1):
            (tmp_path / "models" / rm / f"seed{s}").mkdir(parents=True)
            for name in ("config.json", "train_metrics.json"):
                (tmp_path / "models" / rm / f"seed{s}" / name).write_text("{}")
    return P


def _patch_stage(monkeypatch, backend):
    from music.stages import best_of_n

    monkeypatch.setattr(best_of_n, "load_prompts", lambda source: QUESTIONS)
    monkeypatch.setattr(best_of_n, "make_chat", lambda cfg, cache, role=None: backend)
    monkeypatch.setattr(best_of_n, "read_pairs", lambda path: known(8, clusters=4))  # the held-out quality twins
    monkeypatch.setattr(best_of_n, "RewardScorer", lambda path, **kw: LengthScorer(1.0 if "baseline" in path else -1.0))
    return best_of_n


def test_the_stage_measures_the_judge_and_reports_it_per_n(tmp_path, monkeypatch):
    best_of_n = _patch_stage(monkeypatch, PolicyAndJudge(bias=1.0, skill=0.5))
    out = best_of_n.run(_stage_params(tmp_path, pairs=6))
    check = out["judge_check"]
    assert check["n_pairs"] == 6 and check["accuracy"] == 1.0 and check["at_chance"] == 0
    assert len(out["judge_check_info"]["records"]) == 6 and out["judge_check_info"]["failures"]["failed"] == 0
    for row in out["by_n"].values():
        assert row["judge_accuracy"] == 1.0 and row["judge_at_chance"] == 0 and row["n_seeds"] == 2
        assert row["failures"] == {} and row["n_short_games"] == 0 and 0 <= row["identical_share"] <= 1
    assert out["candidates_sampled"] > 0 and out["candidates_failed"] == 0


def test_a_judge_that_fails_every_call_fails_the_stage(tmp_path, monkeypatch):
    from music.failures import StageFailed

    best_of_n = _patch_stage(monkeypatch, PolicyAndJudge(fail=True))
    with pytest.raises(StageFailed, match="judge check on known pairs"):
        best_of_n.run(_stage_params(tmp_path, pairs=6))
    with pytest.raises(StageFailed, match="(?s)best_of_n: games.*judge_error"):  # not measured first: the games fail
        best_of_n.run(_stage_params(tmp_path / "unmeasured", pairs=0))
    assert not (tmp_path / "m" / "best_of_n.json").exists()


class FlakyPolicy(FakePolicy):
    """Every `every`-th candidate of a call fails (text None), the rest as FakePolicy."""

    def __init__(self, every=3):
        super().__init__()
        self.every = every

    def generate(self, conversations, **kw):
        out = super().generate(conversations, **kw)
        return [ChatReply(None, "error", "HTTP 500") if i % self.every == 1 else r for i, r in enumerate(out)]


def test_a_failing_policy_candidate_is_counted_and_short_games_are_shown(tmp_path, monkeypatch):
    from music.failures import StageFailed
    from music.stages.best_of_n import CandidateLog

    log = CandidateLog()
    games = play(
        {"baseline": LengthScorer(1.0), "music": LengthScorer(-1.0)},
        GradedJudge(),
        policy=FlakyPolicy(),
        graded=True,
        log=log,
    )
    assert log.sampled > 0 and len(log.failures) > 0 and {r for r, _ in log.failures} == {"policy_error"}
    row = summarize(games)["4"]
    assert row["n_short_games"] > 0 and row["n_games"] == len(QUESTIONS)  # played with fewer candidates, shown
    assert all(u <= 4 for g in games if g.n == 4 for per in g.candidates.values() for u, _ in per)
    flaky = FlakyPolicy()
    flaky.option_logprobs = GradedJudge().option_logprobs  # judges well; its candidates fail
    best_of_n = _patch_stage(monkeypatch, flaky)
    with pytest.raises(StageFailed, match="(?s)policy candidates.*policy_error"):
        best_of_n.run(_stage_params(tmp_path, pairs=0))


def test_the_win_rate_interval_resamples_prompts_and_seeds():
    from music.evaluate.stats import two_level_bootstrap
    from music.stages.best_of_n import design_bootstrap

    outcomes = {f"p{i}": ["win", "tie", "loss", "win"] if i < 5 else ["loss", "tie", "tie", "win"] for i in range(8)}
    games = _games(outcomes)
    got = design_bootstrap(games)
    prompts = sorted(outcomes)
    m = [[{"win": 1.0, "tie": 0.5, "loss": 0.0}[outcomes[p][s]] for p in prompts] for s in range(4)]
    ref = two_level_bootstrap([m], (1.0,), prompts, n_boot=4000, seed=0)
    assert (got["win_rate_ties_half_ci_low"], got["win_rate_ties_half_ci_high"]) == pytest.approx(
        (ref["ci_low"], ref["ci_high"])
    )  # the shared two-level core: prompts, then the paired seeds
    assert got["n_seeds"] == 4
    one_seed = design_bootstrap([g for g in games if g.rm_seed == 0])
    wide = got["win_rate_ties_half_ci_high"] - got["win_rate_ties_half_ci_low"]
    assert wide > 0 and one_seed["n_seeds"] == 1
    failed = games[:1]
    failed[0].outcome = "failed"
    assert design_bootstrap(games)["win_rate_ties_half_ci_low"] is not None  # a failed game is left out


@pytest.mark.slow
def test_in_process_label_logprobs_agree_with_constrained_choice(tiny_backbone):
    from music.chat import make_chat
    from music.evaluate.judge import VERDICT_OPTIONS, label_logprobs, likeliest

    judge = make_chat(ChatModelConfig(model=str(tiny_backbone), batch_size=1, max_new_tokens=4), None)
    reqs = [
        judge_request(
            load_template(),
            [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "x"}],
            [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "y" * i}],
        )
        for i in range(3)
    ]
    lps = label_logprobs(judge, reqs)
    picks = judge.choose(reqs, list(VERDICT_OPTIONS), prefix="[[", suffix="]]")
    assert [f"[[{likeliest(lp)}]]" for lp in lps] == [r.text for r in picks]
    assert all(set(lp) == set(VERDICT_OPTIONS) and all(v <= 0 for v in lp.values()) for lp in lps)


def test_a_served_judge_gives_its_label_logprobs_from_the_api(monkeypatch):
    from helpers import LoopbackJSONServer

    from music.chat.openai_backend import OpenAIChat
    from music.evaluate.judge import judge_check, label_logprobs

    monkeypatch.setenv("MUSIC_TEST_API_KEY", "k")
    seen = []

    def respond(body):
        seen.append(body)
        text = body["messages"][0]["content"]
        first = "long" in text.split("<conversation_a>")[1].split("</conversation_a>")[0]  # A holds the long reply
        top = [{"token": "A", "logprob": -0.1 if first else -2.5}, {"token": "B", "logprob": -2.5 if first else -0.1}]
        if "nolp" in text:
            return 200, {"choices": [{"message": {"content": "[[A]]"}, "finish_reason": "stop"}]}
        tokens = [
            {"token": "[[", "logprob": 0.0, "top_logprobs": []},
            {"token": "A", "logprob": -0.1, "top_logprobs": top},
        ]
        return 200, {
            "choices": [{"message": {"content": "[[A]]"}, "finish_reason": "stop", "logprobs": {"content": tokens}}]
        }

    server = LoopbackJSONServer(respond)
    try:
        cfg = ChatModelConfig(
            backend="openai", model="judge", base_urls=[server.url], api_key_env="MUSIC_TEST_API_KEY", max_retries=0
        )
        judge = OpenAIChat(cfg, None, role="evaluate.judge")
        check, _ = judge_check(judge, known(4), load_template())
        assert check["accuracy"] == 1.0 and check["n_failed"] == 0
        assert seen[0]["logprobs"] is True and seen[0]["top_logprobs"] == 20 and seen[0]["temperature"] == 0.0
        lps = label_logprobs(judge, [[{"role": "user", "content": "nolp <conversation_a>x</conversation_a>"}]])
        assert lps == [None]  # a server without logprobs: a failed call, counted by the caller
    finally:
        server.close()
    fused = {
        "logprobs": {
            "content": [
                {
                    "token": "[[B",
                    "logprob": -0.3,
                    "top_logprobs": [{"token": "[[B", "logprob": -0.3}, {"token": "[[A", "logprob": -1.4}],
                }
            ]
        }
    }
    assert OpenAIChat.verdict_logprobs(fused, ["A", "B", "C"]) == {"A": -1.4, "B": -0.3, "C": -1.4}
