"""Relevance checks of the contrast stage: the modified request kept, contrast margins, echo, and their filters."""

from __future__ import annotations

import pytest
from helpers import USER_PROMPT, FakeChat, WordOverlapEncoder, make_seeds

from music.chat import ChatReply
from music.config import ContrastConfig, SimulateConfig
from music.pairs.filters import apply_filters
from music.pairs.relevance import Contrast, contrast_margins, echo_scores, pick_modified_request
from music.stages.contrast import contrast_conversations
from music.stages.simulate import simulate_seeds

ENC = WordOverlapEncoder()


def test_the_kept_request_is_on_topic_and_unlike_the_original():
    original = "how long do I boil an egg"
    anchor = "Eggs and pasta both cook in boiling water."
    candidates = [
        "how long do I boil an egg please",  # a paraphrase: useless as a contrast
        "what pasta shape goes with pesto",  # on topic, a different request
        "tell me about the stock market",
    ]  # off topic
    best, scores = pick_modified_request(ENC, original, anchor, candidates)
    assert best == 1 and scores[1] > scores[2] and scores[1] > scores[0]
    assert pick_modified_request(ENC, original, anchor, candidates[:1])[0] == 0
    with pytest.raises(ValueError):
        pick_modified_request(ENC, original, anchor, [])


def test_margins_say_which_reply_answers_which_request():
    good = Contrast(
        "boil an egg",
        "cook pasta",
        chosen_reply="boil the egg nine minutes",
        rejected_reply="cook the pasta ten minutes",
    )
    swapped = Contrast(
        "boil an egg",
        "cook pasta",
        chosen_reply="cook the pasta ten minutes",
        rejected_reply="boil the egg nine minutes",
    )
    (c1, r1), (c2, r2) = contrast_margins(ENC, [good, swapped])
    assert c1 > 0 and r1 > 0 and c2 < 0 and r2 < 0
    assert contrast_margins(ENC, []) == []


def test_echo_sees_a_repeated_message_and_ignores_the_seed_context():
    ctx = [{"role": "user", "content": "tell me a joke"}, {"role": "assistant", "content": "why did the chicken cross"}]
    fine = ctx + [
        {"role": "user", "content": "another one about cats"},
        {"role": "assistant", "content": "cats nap all day"},
    ]
    parrot = ctx + [
        {"role": "user", "content": "another one about cats"},
        {"role": "assistant", "content": "another one about cats"},
    ]
    loop = fine + [{"role": "user", "content": "another one about cats"}, {"role": "assistant", "content": "dogs bark"}]
    scores = echo_scores(ENC, [fine, parrot, loop, ctx + ctx[1:]], [2, 2, 2, 2])
    assert scores[0] < 0.5 and scores[1] == 1.0 and scores[2] == 1.0


def _convs(n=4, turns=3):
    return simulate_seeds(
        make_seeds(n),
        FakeChat("fake:user"),
        FakeChat("fake:assistant"),
        SimulateConfig(turns=turns, real_next_user=False),
        split="train",
    )


def test_resampling_asks_k_times_in_one_call_and_records_relevance():
    user, asst = FakeChat("fake:user"), FakeChat("fake:assistant")
    cfg = ContrastConfig(
        method="resample", candidates=3, divergence="fixed", divergence_turn=1, request_similarity=None
    )
    cands = contrast_conversations(
        _convs(),
        user=user,
        assistant=asst,
        contrast=None,
        sim_cfg=SimulateConfig(turns=3, real_next_user=False),
        cfg=cfg,
        split="train",
        encoder=ENC,
    )
    assert user.calls == 1 + 2  # one call for the 3 x 4 resampled requests, then the rejected branch's 2 turns
    for c in cands:
        rel = c["fields"]["relevance"]
        assert c["failure"] is None and rel["modified_candidates"] == 3 and len(c["notes"]["modified_scores"]) == 3
        assert rel["chosen_margin"] > 0 and rel["rejected_margin"] > 0  # the fake replies name what they answer
        assert c["fields"]["modified_request"] != c["fields"]["original_request"]
    kept, stats = apply_filters(cands, cfg)
    assert stats["kept"] == len(cands)


def test_unusable_samples_are_not_kept_and_a_weak_contrast_is_filtered():
    def leaky_or_same(messages, seed):  # every resampled request is unusable for the first conversation
        resampling = messages[0]["content"] == USER_PROMPT and len(messages) == 4  # the divergence request of seed 0
        if resampling and "Question 0" in messages[2]["content"] and seed % 2:
            return ChatReply("Sure, here is the answer.", "stop")  # the user model answering: a leak
        return None

    convs = _convs()
    cfg = ContrastConfig(
        method="resample", candidates=2, divergence="fixed", divergence_turn=1, request_similarity=None
    )
    cands = contrast_conversations(
        convs,
        user=FakeChat("fake:user", script=leaky_or_same),
        assistant=FakeChat("fake:assistant"),
        contrast=None,
        sim_cfg=SimulateConfig(turns=3, real_next_user=False),
        cfg=cfg,
        split="train",
        encoder=ENC,
    )
    assert all(c["notes"]["modified_candidates"] in (1, 2) for c in cands)  # a leaking sample is never kept
    assert all(c["fields"]["modified_request"] != "Sure, here is the answer." for c in cands)
    strict = ContrastConfig(**{**cfg.__dict__, "min_contrast_margin": 2.0})  # no margin can reach it
    kept, stats = apply_filters(cands, strict)
    assert kept == [] and stats["removed"]["weak_contrast"] == len(cands)
    off = ContrastConfig(**{**cfg.__dict__, "min_contrast_margin": None, "max_echo_similarity": None})
    assert apply_filters(cands, off)[1]["kept"] == len(cands)


def test_an_echoing_conversation_is_filtered():
    cfg = ContrastConfig(
        method="resample",
        candidates=1,
        divergence="fixed",
        divergence_turn=1,
        max_echo_similarity=0.9,
        request_similarity=None,
    )
    cands = contrast_conversations(
        _convs(),
        user=FakeChat("fake:user"),
        assistant=FakeChat("fake:assistant"),
        contrast=None,
        sim_cfg=SimulateConfig(turns=3, real_next_user=False),
        cfg=cfg,
        split="train",
        encoder=ENC,
    )
    cands[0]["notes"]["echo"] = 0.97
    kept, stats = apply_filters(cands, cfg)
    assert stats["removed"]["echo"] == 1 and len(kept) == len(cands) - 1


def test_of_the_answered_requests_the_clearest_contrast_is_kept():
    from music.chat.rollout import Event
    from music.stages.contrast import pick_contrasts

    def ev(text):
        return Event("rejected", 2, "assistant", "stop", text, text)

    chosen = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "boil an egg"},
        {"role": "assistant", "content": "boil the egg nine minutes"},
    ]
    w = {"history": chosen[:3], "reply_at": 3, "cand": {"fields": {"chosen": chosen}, "events": [], "notes": {}}}
    requests = [ev("cook pasta"), ev("bake bread")]
    answers = [
        (ev("boil the pasta"), None),  # half about the egg: a weak contrast
        (ev("bake the bread in the oven"), None),
    ]  # clearly answers the modified request
    [(kept_w, (answer, failure))] = pick_contrasts([(w, r) for r in requests], answers, ENC)
    assert kept_w is w and answer.text == "bake the bread in the oven" and failure is None
    assert w["cand"]["fields"]["modified_request"] == "bake bread" and w["cand"]["notes"]["answered_candidates"] == 2
    assert w["cand"]["notes"]["rejected_margin"] > 0 and w["cand"]["notes"]["chosen_margin"] > 0
    # a failed answer is never preferred to a usable one
    w2 = {**w, "cand": {"fields": {"chosen": chosen}, "events": [], "notes": {}}}
    [(_, (answer, failure))] = pick_contrasts([(w2, r) for r in requests], [(ev(""), "empty_reply"), answers[0]], ENC)
    assert failure is None and answer.text == "boil the pasta"


# --- the similarity band on rewritten requests (contrast.request_similarity) -------------------------------------

ORIGINAL = "how long do I boil an egg"
PARAPHRASE = "how long do I boil an egg please"  # word-overlap cosine 0.94 with ORIGINAL
NEAR_MISS = "how long do I boil pasta"  # 0.77
OTHER = "tell me about the stock market"  # 0.0


def test_in_band_keeps_only_candidates_inside_the_window():
    from music.pairs.relevance import in_band

    inside, sims = in_band(ENC, ORIGINAL, [PARAPHRASE, NEAR_MISS, OTHER], [0.3, 0.8])
    assert inside == [1] and sims[0] > 0.8 and 0.3 <= sims[1] <= 0.8 and sims[2] < 0.3
    assert in_band(ENC, ORIGINAL, [], [0.3, 0.8]) == ([], [])


class ListChat(FakeChat):
    """A user model whose replies are given in order (one per request)."""

    def __init__(self, texts):
        super().__init__("fake:user")
        self.texts = list(texts)

    def generate(self, conversations, **kw):
        self.calls += 1
        return [ChatReply(self.texts.pop(0), "stop") for _ in conversations]


def _work(original=ORIGINAL):
    history = [
        {"role": "user", "content": "I am cooking dinner"},
        {"role": "assistant", "content": "Eggs or pasta?"},
        {"role": "user", "content": original},
    ]
    return {
        "history": history,
        "turn": 2,
        "cand": {
            "fields": {"kind": "music", "original_request": original, "pair_id": "music-x"},
            "events": [],
            "failure": None,
            "notes": {},
        },
    }


def test_the_band_keeps_only_in_window_rewrites_and_counts_the_drops_as_filter_drops_not_failures():
    from music.stages.contrast import band_counts, candidate_failures, resampled_requests
    from music.stages.simulate import SimPrompts

    kw = dict(prompts=SimPrompts.load(), k=3, keep=2, trim=True, seed=0, split="train")
    a, b = _work(), _work()
    out = resampled_requests(
        [a, b], ListChat([PARAPHRASE, NEAR_MISS, OTHER, PARAPHRASE, OTHER, OTHER]), ENC, band=[0.3, 0.8], **kw
    )
    assert [(w is a, [e.text for e in events]) for w, events in out] == [(True, [NEAR_MISS])]
    assert a["cand"]["notes"]["outside_band"] == 2 and a["cand"]["failure"] is None
    assert b["cand"]["notes"]["outside_band"] == 3 and b["cand"]["failure"] == "request_band"
    assert b["cand"]["fields"]["modified_request"] == PARAPHRASE  # the rewrite nearest the window stands for it
    cfg = ContrastConfig(request_similarity=[0.3, 0.8])
    a["cand"]["fields"].update(
        modified_request=NEAR_MISS,  # as pick_contrasts and the rejected branch set them
        chosen=[*a["history"], {"role": "assistant", "content": "Nine minutes."}],
        rejected=[*a["history"], {"role": "assistant", "content": "Ten minutes for pasta."}],
    )
    kept, stats = apply_filters([a["cand"], b["cand"]], cfg)
    assert stats["removed"]["request_band"] == 1 and kept == [a["cand"]]
    assert candidate_failures([a["cand"], b["cand"]], cfg)["failed"] == 0  # not a failure (max_failed_share)
    counts = band_counts([a["cand"], b["cand"]], kept, cfg)
    assert counts["rewrites_usable"] == 6 and counts["rewrites_outside_band"] == 5 and counts["no_rewrite_in_band"] == 1
    # without a band (the old behaviour): the two most unlike the original are answered, nothing is dropped
    c = _work()
    [(w, events)] = resampled_requests([c], ListChat([PARAPHRASE, NEAR_MISS, OTHER]), ENC, band=None, **kw)
    assert [e.text for e in events] == [OTHER, NEAR_MISS] and "outside_band" not in c["cand"]["notes"]


def test_the_band_must_be_an_ordered_window():
    from music.errors import DataError

    for bad in ([0.8, 0.3], [0.5], [0.1, 1.5], "0.3,0.8"):
        with pytest.raises(DataError, match="request_similarity"):
            ContrastConfig(request_similarity=bad).validate()
    ContrastConfig(request_similarity=[0.3, 0.8]).validate()
