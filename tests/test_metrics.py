"""The metric schema: builders keep today's names, ``parse_key`` inverts every builder, directions are known."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from morl import metrics as M
from morl.metrics import MetricKey, direction, parse_key

# objective names as users write them: underscores, digits, dots, dashes, unicode letters; never '/'
names = st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=20)
objectives = names.filter(lambda s: s != M.MEAN_LENGTH)


def test_builders_keep_the_logged_names():
    assert M.reward_mean("accuracy") == "rewards/accuracy/mean"
    assert M.reward_std("accuracy") == "rewards/accuracy/std"
    assert M.reward_stat("accuracy", "timeouts") == "rewards/accuracy/timeouts"
    assert M.weight("clarity") == "weights/clarity"
    assert M.eval_metric("greedy", "accuracy") == "eval/greedy/accuracy"
    assert M.eval_mean_length("sampled") == "eval/sampled/mean_length"
    assert M.covariance("clipped_weight", "accuracy") == "cov/clipped_weight/accuracy"
    assert M.correlation("score", "accuracy") == "corr/score/accuracy"
    assert M.alarm("accuracy") == "alarm/accuracy"
    assert M.grad_cos("accuracy", "conciseness") == "grad_cos/accuracy/conciseness"
    assert M.grad_align("accuracy") == "grad_align/accuracy"
    assert M.timing("rollout") == "timing/rollout"
    assert M.method_key("ctwa", "u", "accuracy") == "ctwa/u/accuracy"
    assert M.method_key("lagrangian", "lambda", "clarity") == "lagrangian/lambda/clarity"
    assert M.method_key("dynamic", "multiplier") == "dynamic/multiplier"
    assert M.COMPLETIONS_MEAN_LENGTH == "completions/mean_length"
    assert M.CLIP_RATIO_REGION == "clip_ratio/region_mean"
    assert (M.CLIP_REMOVED_MASS, M.CLIP_TOKEN_FRACTION) == ("clip/removed_mass", "clip/token_fraction")
    assert (M.SCORE, M.SCORE_STD, M.SKIPPED_STEPS) == ("reward", "reward_std", "train/skipped_steps")


@given(objectives)
@example("accuracy_2")
@example("r_1_mean")
@example("mean")
def test_per_objective_builders_round_trip(objective):
    cases = {
        M.reward_mean: (M.REWARDS, "mean"),
        M.reward_std: (M.REWARDS, "std"),
        M.weight: (M.WEIGHTS, ""),
        M.alarm: (M.ALARM, ""),
        M.grad_align: (M.GRAD_ALIGN, ""),
    }
    for build, (family, name) in cases.items():
        key = build(objective)
        assert parse_key(key) == MetricKey(family, family, name, (objective,))
        assert parse_key(key).key == key


@given(st.sampled_from(M.REWARD_STATS), objectives)
def test_reward_stats_round_trip(stat, objective):
    assert parse_key(M.reward_stat(objective, stat)) == MetricKey(M.REWARDS, M.REWARDS, stat, (objective,))


@given(names, objectives)
@example("greedy", "mean_length_2")
def test_eval_round_trip(mode, objective):
    parsed = parse_key(M.eval_metric(mode, objective))
    assert parsed == MetricKey(M.EVAL, M.EVAL, "", (objective,), mode=mode)
    assert parsed.objective == objective and parsed.key == M.eval_metric(mode, objective)
    length = parse_key(M.eval_mean_length(mode))
    assert length == MetricKey(M.EVAL, M.EVAL, M.MEAN_LENGTH, mode=mode) and length.objective is None
    assert length.key == M.eval_mean_length(mode)


@given(names, objectives)
def test_covariance_round_trip(signal, objective):
    for build, family in ((M.covariance, M.COV), (M.correlation, M.CORR)):
        parsed = parse_key(build(signal, objective))
        assert parsed == MetricKey(family, family, "", (objective,), signal=signal)
        assert parsed.key == build(signal, objective)


@given(objectives, objectives)
def test_gradient_cosine_round_trip(a, b):
    parsed = parse_key(M.grad_cos(a, b))
    assert parsed == MetricKey(M.GRAD_COS, M.GRAD_COS, "", (a, b)) and parsed.key == M.grad_cos(a, b)


@given(names.filter(lambda s: s not in M.NAMESPACES), names, st.none() | objectives)
def test_method_keys_round_trip(namespace, quantity, objective):
    key = M.method_key(namespace, quantity, objective)
    expected = (objective,) if objective is not None else ()
    parsed = parse_key(key)
    assert parsed == MetricKey(M.METHOD, namespace, quantity, expected)
    assert parsed.key == key


@given(names)
def test_timing_round_trip(stage):
    assert parse_key(M.timing(stage)) == MetricKey(M.TIMING, M.TIMING, stage)


@pytest.mark.parametrize(
    "key",
    [
        "rewards/accuracy_2/mean",
        "eval/greedy/clarity",
        "cov/score/x1",
        "ctwa/cov_ema/accuracy",
        "gradnorm/L0/accuracy",
        "sampling/importance_ratio/max",
        "clip_ratio/low_mean",
        "completions/max_length",
        "loss",
        "reward_std",
    ],
)
def test_logged_names_parse_and_rebuild(key):
    assert parse_key(key).key == key


def test_names_outside_the_schema_are_none():
    for key in ["step", "kind", "", "rewards/accuracy", "rewards/a/b/mean", "eval/greedy", "cov/score", "a//b"]:
        assert parse_key(key) is None, key
    assert parse_key("grad_cos/a") is None and parse_key("ctwa/u/a/b") is None


def test_slash_in_a_name_is_rejected():
    with pytest.raises(ValueError, match="cannot contain '/'"):
        M.reward_mean("a/b")
    for build in (M.weight, M.alarm, M.grad_align):
        with pytest.raises(ValueError, match="objective"):
            build("math/accuracy")
    with pytest.raises(ValueError, match="mode"):
        M.eval_metric("greedy/x", "accuracy")
    with pytest.raises(ValueError, match="cannot contain"):
        M.grad_cos("a", "b/c")
    with pytest.raises(ValueError, match="non-empty"):
        M.weight("")
    with pytest.raises(ValueError, match="mean length"):
        M.eval_metric("greedy", "mean_length")
    with pytest.raises(ValueError, match="belongs to morl"):
        M.method_key("rewards", "x", "accuracy")
    with pytest.raises(ValueError, match="statistic"):
        M.reward_stat("accuracy", "p/50")  # a reward's own counter may have any name but one with a slash


def test_direction():
    assert direction(M.reward_mean("accuracy")) == "maximize"
    assert direction(M.eval_metric("sampled", "clarity")) == "maximize"
    assert direction(M.SCORE) == "maximize"
    assert direction(M.eval_mean_length("greedy")) == "minimize"
    assert direction(M.COMPLETIONS_MEAN_LENGTH) == "minimize"
    for key in (M.LOSS, M.KL, M.reward_std("a"), M.weight("a"), M.covariance("score", "a"), M.timing("update")):
        assert direction(key) is None, key
    assert direction("not//a/key") is None
    # an objective that minimizes says so in the run's manifest
    assert direction(M.eval_metric("greedy", "toxicity"), {"toxicity": "minimize"}) == "minimize"
    assert direction(M.reward_mean("toxicity"), {"toxicity": "minimize"}) == "minimize"
