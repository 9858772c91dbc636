"""bandpo.registry.Registry, the one name -> object helper behind every registry, and the registries built on it."""

from __future__ import annotations

import pytest

from bandpo.registry import Registry


@pytest.fixture
def reg() -> Registry:
    r: Registry[int] = Registry("widget", hint="add one with register_widget")
    r.register("beta", 2)
    r.register("alpha", 1)
    return r


def test_register_get_and_return_value():
    r: Registry[str] = Registry("widget")
    assert r.register("a", "A") == "A"
    assert r.get("a") == "A" and "a" in r and len(r) == 1
    assert r.find("a") == "A" and r.find("b") is None


def test_duplicate_name_is_refused_and_keeps_the_first(reg):
    with pytest.raises(ValueError, match=r"^widget 'alpha' is already registered \(pass overwrite=True"):
        reg.register("alpha", 99)
    assert reg.get("alpha") == 1


def test_overwrite_replaces(reg):
    reg.register("alpha", 10, overwrite=True)
    assert reg.get("alpha") == 10 and len(reg) == 2


def test_unknown_name_lists_the_known_names_sorted_and_the_hint(reg):
    with pytest.raises(ValueError) as err:
        reg.get("gamma")
    assert str(err.value) == "unknown widget 'gamma'; known widgets: alpha, beta (add one with register_widget)"
    with pytest.raises(ValueError, match="unknown widget of type int; known widgets: alpha, beta"):
        reg.get(3)
    with pytest.raises(ValueError, match="known widgets: alpha, beta"):
        reg.unregister("gamma")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_name_must_be_a_non_empty_string(bad):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Registry("widget").register(bad, 1)


def test_names_are_sorted_whatever_the_registration_order(reg):
    reg.register("aardvark", 0)
    assert reg.names() == ["aardvark", "alpha", "beta"]
    assert list(reg) == reg.names()
    assert reg.items() == [("aardvark", 0), ("alpha", 1), ("beta", 2)]
    assert repr(reg) == "Registry('widget': aardvark, alpha, beta)"


def test_unregister(reg):
    reg.unregister("alpha")
    assert "alpha" not in reg and reg.names() == ["beta"]
    reg.register("alpha", 5)  # the name is free again
    assert reg.get("alpha") == 5


def test_decorator_registers_and_returns_the_object():
    r: Registry = Registry("function")

    @r.decorator("double")
    def double(x):
        return 2 * x

    assert r.get("double") is double and double(2) == 4
    with pytest.raises(ValueError, match="already registered"):
        r.decorator("double")(lambda x: x)

    @r.decorator("double", overwrite=True)
    def triple(x):
        return 3 * x

    assert r.get("double") is triple


# ----------------------------------------------------------------------------------------------------------
# The package's registries are Registry objects with the public wrappers documented in docs/architecture.md
# ----------------------------------------------------------------------------------------------------------


def test_training_registries_use_the_helper():
    from bandpo.training import rollout, tasks

    for r in (tasks.TASKS, tasks.SFT_TASKS, tasks.REWARD_FUNCS, tasks.TEMPLATES, rollout.SAMPLERS):
        assert isinstance(r, Registry)
    assert tasks.TASKS.names() == ["addition", "math_file", "rare_strategy"] and tasks.SFT_TASKS.names() == ["addition", "rare_strategy"]
    assert set(tasks.REWARD_FUNCS.names()) >= {"answer_format", "answer_line", "exact_match"}
    assert rollout.SAMPLERS.names() == ["hf_generate", "loop", "loop_shared"]
    assert rollout.SAMPLERS.get("loop") is rollout.sample_loop


def test_register_task_reward_and_sampler_wrappers():
    from bandpo.training import rollout, tasks
    from bandpo.training.config import TaskConfig

    @tasks.register_task("_test_task", sft=True)
    def factory(cfg, seed):
        return tasks.Task("_test_task", lambda step, n: [{"prompt": "x", "answer": str(seed)}] * n, ("exact_match",))

    @tasks.register_reward("_test_reward")
    def reward(prompts, completions, **_):
        return [0.5] * len(completions)

    @rollout.register_sampler("_test_sampler")
    def sampler(*args, **kwargs):
        raise NotImplementedError

    try:
        assert "_test_task" in tasks.SFT_TASKS
        task = tasks.build_task(TaskConfig(name="_test_task"), seed=7)
        assert task.rows(0, 2) == [{"prompt": "x", "answer": "7"}] * 2
        assert tasks.weighted_rewards(["_test_reward"], None, ["p"], ["c"], {})[0] == [0.5]
        with pytest.raises(ValueError, match="already registered"):
            tasks.register_task("_test_task")(factory)
        with pytest.raises(ValueError, match="already registered"):
            tasks.register_reward("_test_reward")(reward)
        with pytest.raises(ValueError, match="already registered"):
            rollout.register_sampler("_test_sampler")(sampler)
    finally:
        tasks.TASKS.unregister("_test_task")
        tasks.SFT_TASKS.unregister("_test_task")
        tasks.REWARD_FUNCS.unregister("_test_reward")
        rollout.SAMPLERS.unregister("_test_sampler")


def test_unknown_task_and_sampler_list_the_known_ones():
    from types import SimpleNamespace

    from bandpo.training import rollout, tasks
    from bandpo.training.config import load_config

    with pytest.raises(ValueError, match="unknown task 'chess'; known tasks: addition, math_file"):
        tasks.build_task(SimpleNamespace(name="chess"), seed=0)
    with pytest.raises(ValueError, match="unknown sampler 'beam'; known samplers: hf_generate, loop"):
        rollout.SAMPLERS.get("beam")
    with pytest.raises(ValueError, match=r"rollout.sampler = 'beam' is invalid: one of \['hf_generate', 'loop', 'loop_shared'\]"):
        load_config(overrides={"rollout.sampler": "beam"})
    with pytest.raises(ValueError, match="unknown reward function 'nope'; known reward functions: answer_format"):
        tasks.weighted_rewards(["nope"], None, ["p"], ["c"], {})
