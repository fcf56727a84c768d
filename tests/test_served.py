"""Served models: a real vLLM server (its CPU build, started once for the session) against the local model on
the same weights; the faults a server can have, from scripted fakes; `serve`'s plans."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest
from fake_openai_server import FakeServer, silent_server
from metaseq_writer import write_checkpoint
from served_server import VLLMServer, missing_message, vllm_python
from tiny_models import save_tiny_model, tiny_model

from helpers.cli.main import main
from helpers.errors import ServerError, SettingsError
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.loading.model import load_model
from helpers.metaseq import convert
from helpers.serving.model import connect

# vLLM's CPU attention takes head sizes of 32 and up (not the unit tests' 16): two heads of 64, so tensor
# parallel 2 splits them.
SERVED_SHAPE = dict(hidden_size=128, num_attention_heads=2, word_embed_proj_dim=128)
PROMPTS = ["Hello world, this is", "The capital of France"]
GREEDY = GenerationSettings.greedy(max_new_tokens=16)


def _require_vllm() -> None:
    if vllm_python() is None:
        pytest.fail(missing_message(), pytrace=False)


@pytest.fixture(scope="session")
def converted_folder(tmp_path_factory) -> Path:
    """A folder written by convert-metaseq from a metaseq-style checkpoint (OPT's vocabulary and positions)."""
    base = tmp_path_factory.mktemp("served-metaseq")
    write_checkpoint(tiny_model("pre-ln", seed=3, **SERVED_SHAPE), base / "ckpt")
    convert(base / "ckpt", base / "hf")
    return base / "hf"


@pytest.fixture(scope="session")
def vllm_server(converted_folder, tmp_path_factory):
    """One vLLM server for the session, serving the converted folder; stopped after."""
    _require_vllm()
    server = VLLMServer(converted_folder, tmp_path_factory.mktemp("vllm-log") / "vllm.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served(vllm_server):
    return connect(vllm_server.url)


@pytest.fixture(scope="session")
def local(converted_folder):
    return tuple(load_model(str(converted_folder), device="cpu", dtype="float32"))


@pytest.mark.served
def test_greedy_text_and_top_logprobs_equal_the_local_model(served, local):
    (model, tokenizer, info), (lmodel, ltokenizer, _) = served, local
    assert info.context == 512 and "served at" in info.device
    remote = generate(model, tokenizer, PROMPTS, GREEDY, top_logprobs=3)
    here = generate(lmodel, ltokenizer, PROMPTS, GREEDY, top_logprobs=3)
    for r, h in zip(remote, here):
        assert r.method == "served" and h.method != "served"
        assert r.token_ids == h.token_ids and r.text == h.text and r.prompt_token_ids == h.prompt_token_ids
        assert r.prompt_token_ids.count(2) == 1  # OPT's </s> once: ids are sent, the server adds none
        assert [t.logprob for t in r.tokens] == pytest.approx([t.logprob for t in h.tokens], abs=1e-4)
        assert [[i for i, _, _ in t.top] for t in r.tokens] == [[i for i, _, _ in t.top] for t in h.tokens]
        assert [lp for t in r.tokens for _, _, lp in t.top] == pytest.approx(
            [lp for t in h.tokens for _, _, lp in t.top], abs=1e-4)
        assert any(served[2].source in note for note in r.notes)  # which server answered


@pytest.mark.served
def test_streaming_arrives_in_several_pieces(served):
    model, tokenizer, _ = served
    text_stream = stream(model, tokenizer, PROMPTS[0], GenerationSettings.greedy(max_new_tokens=40))
    pieces = list(text_stream)
    assert len(pieces) > 1 and "".join(pieces) == text_stream.result.text
    assert text_stream.result.text == generate(model, tokenizer, PROMPTS[0], GenerationSettings.greedy(max_new_tokens=40)).text


@pytest.mark.served
def test_stop_ends_the_servers_generation_and_the_next_request_is_answered(served, vllm_server):
    model, tokenizer, _ = served
    made = vllm_server.metric("vllm:generation_tokens_total")
    text_stream = stream(model, tokenizer, PROMPTS[0], GenerationSettings.greedy(max_new_tokens=480))
    for count, _ in enumerate(text_stream):
        if count == 2:
            text_stream.stop()
    assert text_stream.result.finish_reason == "stopped" and len(text_stream.result.token_ids) < 480
    deadline = time.monotonic() + 60  # the server notices the closed connection and aborts that request
    while vllm_server.metric("vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vllm_server.metric("vllm:num_requests_running") == 0
    after = vllm_server.metric("vllm:generation_tokens_total")
    time.sleep(2)
    assert vllm_server.metric("vllm:generation_tokens_total") == after  # nothing more generated for it
    assert after - made < 480  # it did not run on to the end
    assert len(generate(model, tokenizer, PROMPTS[1], GenerationSettings.greedy(max_new_tokens=4)).token_ids) == 4


@pytest.mark.served
def test_stop_strings_seeds_and_n(served, local):
    model, tokenizer, _ = served
    greedy_text = generate(model, tokenizer, PROMPTS[0], GREEDY).text
    stop = greedy_text[len(greedy_text) // 2:][:3]
    cut = generate(model, tokenizer, PROMPTS[0], GREEDY.replace(stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == greedy_text[: greedy_text.index(stop)]
    assert cut.text == generate(local[0], local[1], PROMPTS[0], GREEDY.replace(stop=(stop,))).text
    sampled = GenerationSettings(max_new_tokens=12, seed=11)
    first, again = (generate(model, tokenizer, PROMPTS[1], sampled) for _ in range(2))
    assert first.text == again.text and first.settings.seed == 11
    assert generate(model, tokenizer, PROMPTS[1], sampled.replace(seed=12)).text != first.text
    three = generate(model, tokenizer, [PROMPTS[1]] * 3, sampled)  # one request with n=3, each choice its own
    assert len(three) == 3 and len({r.text for r in three}) == 3 and three[0].text == first.text


@pytest.mark.served
def test_the_command_line_takes_a_url(vllm_server, local, capsys):
    code = main(["generate", "--model", vllm_server.url, "--greedy", "--max-new-tokens", "6", "--json", PROMPTS[0]])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = generate(local[0], local[1], PROMPTS[0], GenerationSettings.greedy(max_new_tokens=6))
    data = json.loads(out)
    assert data["token_ids"] == expected.token_ids and data["method"] == "served"


@pytest.mark.served
def test_an_unknown_model_name_and_a_parameter_the_server_rejects(vllm_server, served):
    with pytest.raises(ServerError, match="does not serve 'opt-66b'; it serves: "):
        connect(vllm_server.url, model="opt-66b")
    model, tokenizer, _ = served
    # more minimum tokens than fit before the context ends: vLLM refuses min_tokens > max_tokens, by name
    with pytest.raises(ServerError, match="rejected a parameter of the request: .*min_tokens"):
        generate(model, tokenizer, PROMPTS[0], GenerationSettings.greedy(max_new_tokens=600, min_new_tokens=550))


@pytest.mark.served
def test_tensor_parallel_2_gives_the_same_greedy_text(tmp_path, local):
    """A second server (two workers, one core each) on a hub-style folder of the same weights."""
    _require_vllm()
    folder = save_tiny_model(tmp_path / "hub", "pre-ln", seed=3, **SERVED_SHAPE)
    server = VLLMServer(folder, tmp_path / "vllm-tp2.log", tensor_parallel=2).start()
    try:
        model, tokenizer, _ = connect(server.url)
        remote = generate(model, tokenizer, PROMPTS, GREEDY)
    finally:
        server.stop()
    assert "world_size=2" in server.log.read_text() or "tensor_parallel_size=2" in server.log.read_text()
    here = generate(local[0], local[1], PROMPTS, GREEDY)
    assert [r.token_ids for r in remote] == [h.token_ids for h in here]


# ----------------------------------------------------------------------------------- refusals and faults


def test_settings_a_server_cannot_do_are_refused_by_name_before_anything_is_sent():
    with FakeServer() as fake:
        model, tokenizer, _ = connect(fake.url)
        asked = len(fake.seen)
        for changes, name in [({"num_beams": 3, "do_sample": False}, "beam search"),
                              ({"penalty_alpha": 0.6, "top_k": 4, "do_sample": False}, "contrastive search"),
                              ({"typical_p": 0.5}, "typical_p=0.5"), ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size")]:
            with pytest.raises(SettingsError, match=f"A served model cannot do .*{name}"):
                generate(model, tokenizer, "Hi", max_new_tokens=4, **changes)
        with pytest.raises(SettingsError, match="method 'cached' runs a model loaded here"):
            generate(model, tokenizer, "Hi", max_new_tokens=4, method="cached")
        assert len(fake.seen) == asked  # nothing sent


def test_a_prompt_longer_than_the_servers_context_is_refused_before_sending():
    with FakeServer() as fake:
        model, tokenizer, _ = connect(fake.url)
        asked = len(fake.seen)
        with pytest.raises(Exception, match="2048 positions"):
            generate(model, tokenizer, "hello " * 2100, max_new_tokens=4)
        assert len(fake.seen) == asked


def test_nothing_listening():
    with FakeServer() as fake:
        url = fake.url
    with pytest.raises(ServerError, match="Nothing answers at http://127.0.0.1:.*Start the server"):
        connect(url, retries=0)


def test_a_server_that_accepts_and_never_answers_times_out_within_the_bound():
    listener, url = silent_server()
    try:
        start = time.monotonic()
        with pytest.raises(ServerError, match="did not answer within 1 s"):
            connect(url, timeout=1, retries=1)
        assert time.monotonic() - start < 30  # two tries of 1 s, the client's short back-off between them
    finally:
        listener.close()


def test_a_wrong_or_missing_key_is_said_without_echoing_it(monkeypatch):
    secret = "sk-test-secret-123456"
    monkeypatch.setenv("MY_SERVER_KEY", secret)
    with FakeServer("unauthorized") as fake:
        with pytest.raises(ServerError) as refused:
            connect(fake.url, api_key_env="MY_SERVER_KEY", retries=0)
        message = str(refused.value)
        assert "refused the API key from the environment variable MY_SERVER_KEY" in message
        assert secret not in message and secret not in repr(refused.value)
        with pytest.raises(ServerError, match="refused the API key from no key"):
            connect(fake.url, api_key_env="NO_SUCH_VARIABLE_SET", retries=0)
    assert fake.seen[0] == ("/v1/models", f"Bearer {secret}")  # sent to that server, and only in its header


def test_the_key_stays_out_of_results_history_and_reprs(monkeypatch):
    secret = "sk-test-secret-abcdef"
    with FakeServer() as fake:
        model, tokenizer, info = connect(fake.url, api_key=secret)
        result = generate(model, tokenizer, "Hi", GREEDY)
    shown = json.dumps(result.as_dict()) + repr(model) + info.summary() + repr(model.connection) + str(vars(info))
    assert secret not in shown and all(header == f"Bearer {secret}" for _, header in fake.seen)
    assert result.token_ids == [31414, 232, 6] and result.finish_reason == "length"


def test_a_url_with_credentials_is_never_shown_with_them():
    with FakeServer() as fake:
        url = fake.url.replace("http://", "http://alice:hunter2@")
        model, _, info = connect(url)
    assert "hunter2" not in repr(model) + info.summary() + info.source


def test_the_server_dying_mid_stream_keeps_the_partial_text_with_finish_reason_error():
    with FakeServer("die-mid-stream") as fake:
        model, tokenizer, _ = connect(fake.url)
        text_stream = stream(model, tokenizer, "Hi", GREEDY)
        received = []
        with pytest.raises(ServerError, match="broke off"):
            for piece in text_stream:
                received.append(piece)
    assert text_stream.result.finish_reason == "error"
    assert text_stream.result.token_ids == [31414, 232] and text_stream.result.text == "".join(received) != ""


def test_malformed_stream_data():
    with FakeServer("malformed") as fake:
        model, tokenizer, _ = connect(fake.url)
        with pytest.raises(ServerError, match="not an OpenAI-compatible answer"):
            generate(model, tokenizer, "Hi", GREEDY)


@pytest.mark.parametrize("mode", ["html", "not-found"])
def test_a_url_that_is_not_an_openai_compatible_server(mode):
    with FakeServer(mode) as fake:
        with pytest.raises(ServerError, match="does not answer like an OpenAI-compatible server"):
            connect(fake.url, retries=0)


def test_a_parameter_the_server_rejects_is_named():
    with FakeServer("reject") as fake:
        model, tokenizer, _ = connect(fake.url)
        with pytest.raises(ServerError, match="rejected a parameter of the request: top_k must be"):
            generate(model, tokenizer, "Hi", GenerationSettings(max_new_tokens=4, seed=1))


def test_a_served_model_that_is_not_opt_is_a_warning():
    with FakeServer("not-opt") as fake, pytest.warns(UserWarning, match="does not use OPT's tokenizer"):
        connect(fake.url)
    with FakeServer() as fake, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        connect(fake.url)  # OPT's tokenizer: no warning of ours (a library's own deprecations may come)
    assert not [w for w in seen if "tokenizer" in str(w.message) and issubclass(w.category, UserWarning)]


# ------------------------------------------------------------------------------------------------ serve


def _serve(capsys, *args) -> tuple[int, dict | str, str]:
    code = main(["serve", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in args and code == 0 else out), err


def test_serve_plans_opt_66b_on_one_node_and_opt_175b_on_two(capsys):
    code, plan, _ = _serve(capsys, "opt-66b", "--gpus", "8", "--gpu-memory", "80GiB", "--dry-run", "--json")
    assert code == 0 and plan["engine"] == "vllm" and plan["fits"]
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (8, 1)
    command = plan["command"]
    assert command[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "facebook/opt-66b"]
    assert command[command.index("--tensor-parallel-size") + 1] == "8" and "--pipeline-parallel-size" not in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    # 66B in fp16 is 132 GB: an eighth of it, and a cache for 16 x 2048 tokens, per GPU
    assert 15e9 < plan["weight_bytes_per_gpu"] < 18e9 and plan["gpu_bytes_per_gpu"] < 0.9 * 80 * 2**30
    assert {w["flag"].split()[0] for w in plan["why"]} >= {"--tensor-parallel-size", "--max-model-len", "--host"}
    code, plan, _ = _serve(capsys, "opt-175b", "--gpus", "8", "--nodes", "2", "--gpu-memory", "80GiB", "--dry-run",
                           "--json")
    assert code == 0 and (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (8, 2) and plan["fits"]
    assert plan["command"][plan["command"].index("--distributed-executor-backend") + 1] == "ray"
    assert any("not on the Hugging Face Hub" in note for note in plan["notes"])


def test_serve_picks_the_fewest_gpus_that_fit_and_refuses_what_cannot_work(capsys, monkeypatch):
    code, _, err = _serve(capsys, "opt-30b", "--gpus", "3", "--gpu-memory", "80GiB", "--dry-run")
    assert code == 1 and "56 attention heads" in err and "1, 2, 4, 7, 8, 14 GPUs per node" in err
    code, _, err = _serve(capsys, "opt-66b", "--gpus", "1", "--gpu-memory", "80GiB", "--dry-run")
    assert code == 1 and "does not fit" in err and "--nodes 1 --gpus 3" in err and "--nodes 2 --gpus 2" in err
    from helpers.serving.command import ServeRequest, serve_plan

    # 122 GiB of weights and 72 GiB of cache for 16 x 2048 tokens: three 80 GiB GPUs; two for 4 sequences
    plan = serve_plan(ServeRequest("opt-66b", gpu_memory=80 * 2**30), gpus_here=8, gpu_bytes_here=80 * 2**30)
    assert plan.layout.tensor_parallel_size == 3 and plan.fits
    plan = serve_plan(ServeRequest("opt-66b", concurrency=4), gpus_here=8, gpu_bytes_here=80 * 2**30)
    assert plan.layout.tensor_parallel_size == 2 and plan.layout.max_concurrency >= 4


def test_serve_listens_beyond_this_machine_only_with_a_key_or_forced(capsys, monkeypatch):
    monkeypatch.delenv("TEAM_KEY", raising=False)
    code, _, err = _serve(capsys, "opt-1.3b", "--gpus", "1", "--host", "0.0.0.0", "--api-key-env", "TEAM_KEY",
                          "--dry-run")
    assert code == 1 and "TEAM_KEY holds no API key" in err and "--force" in err
    monkeypatch.setenv("TEAM_KEY", "sk-team-secret-42")
    code, plan, _ = _serve(capsys, "opt-1.3b", "--gpus", "1", "--host", "0.0.0.0", "--api-key-env", "TEAM_KEY",
                           "--dry-run", "--json")
    assert code == 0 and plan["environment"]["VLLM_API_KEY"] == "$TEAM_KEY"
    assert "sk-team-secret-42" not in json.dumps(plan)
    monkeypatch.delenv("TEAM_KEY")
    code, _, _ = _serve(capsys, "opt-1.3b", "--gpus", "1", "--host", "0.0.0.0", "--api-key-env", "TEAM_KEY",
                        "--force", "--dry-run")
    assert code == 0


def test_serve_takes_folders_as_they_are(capsys, converted_folder, tiny_pre_folder, tmp_path):
    code, plan, _ = _serve(capsys, str(converted_folder), "--gpus", "0", "--context", "512", "--dry-run", "--json")
    assert code == 0 and plan["device"] == "cpu" and plan["model"] == str(converted_folder.resolve())
    assert plan["environment"] == {"VLLM_CPU_KVCACHE_SPACE": "1"} and "--max-model-len" in plan["command"]
    code, _, err = _serve(capsys, str(tiny_pre_folder), "--gpus", "0", "--dry-run")  # heads of 16: no CPU kernel
    assert code == 1 and "head sizes 32, 64" in err and "has 16" in err
    assert "--hf-overrides" not in plan["command"]  # convert-metaseq names the architecture, as hub folders do
    old = json.loads((converted_folder / "config.json").read_text())
    old.pop("architectures")  # as convert-metaseq wrote it before: vLLM would serve no completions
    (tmp_path / "config.json").write_text(json.dumps(old))
    code, _, err = _serve(capsys, str(tmp_path), "--gpus", "1", "--dry-run")
    assert code == 1 and "no tokenizer" in err
    (tmp_path / "tokenizer.json").write_text((converted_folder / "tokenizer.json").read_text())
    code, plan, _ = _serve(capsys, str(tmp_path), "--gpus", "0", "--dry-run", "--json")
    flag = plan["command"].index("--hf-overrides")
    assert json.loads(plan["command"][flag + 1]) == {"architectures": ["OPTForCausalLM"]}


@pytest.mark.served
@pytest.mark.notebook
def test_notebook_08_runs_against_the_server(vllm_server, converted_folder):
    from notebook_runner import outputs_text, run_notebook

    nb = run_notebook("08_beyond_one_gpu.ipynb", {"SERVER_URL": vllm_server.url, "MAX_NEW_TOKENS": 8,
                                                  "LOCAL_MODEL": str(converted_folder),
                                                  "CONCURRENCY": [1, 4], "REQUESTS_PER_LEVEL": 4})
    text = outputs_text(nb)
    # the playground's side by side: the served model and the same weights loaded here, greedy, the same text
    compared = [line.split(" \u00b7 ") for line in text.splitlines() if line.startswith("side by side ")]
    assert [c[0] for c in compared] == [f"side by side 1: {vllm_server.url}", f"side by side 2: {converted_folder}"]
    assert compared[0][-1] == compared[1][-1] != "''"
    assert "served at" in text and "alternatives:" in text and "finished:" in text
    assert "--tensor-parallel-size 8" in text and "--pipeline-parallel-size 2" in text
    assert "4 at once:" in text and "tokens/s in all" in text


def test_bench_with_a_url_sweeps_the_requests_in_flight_beside_a_raw_loop_and_the_local_model(tmp_path, capsys,
                                                                                               tiny_pre_folder):
    with FakeServer() as fake:
        code = main(["bench", "--model", fake.url, "--batch", "1,4", "--new-tokens", "3", "--local", str(tiny_pre_folder),
                     "--device", "cpu", "--json", str(tmp_path / "served.json"), "--plot", str(tmp_path / "served.png")])
        asked = [path for path, _ in fake.seen if path == "/v1/completions"]
        bodies = [body for path, body in fake.bodies if path == "/v1/completions"]
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "served.json").read_text())
    for key in ("rows", "raw_rows", "local_rows"):  # the same requests through the client, raw, and loaded here
        assert [(r["concurrency"], r["requests"], r["new_tokens"]) for r in report[key]] == [(1, 2, 6), (4, 8, 24)]
        assert all(r["aggregate_tokens_per_second"] > 0 and r["time_to_first_token"] > 0 for r in report[key])
    assert len(asked) == 20  # 10 through this client, the same 10 raw
    client, raw = bodies[:2], bodies[2:4]  # level 1: two requests each way, one at a time
    for body in client + raw:
        body.pop("stream_options", None)
    assert [{**b, "stream": True} for b in client] == raw  # the raw loop sends exactly what the client sends
    assert report["local"] == str(tiny_pre_folder) and [o["concurrency"] for o in report["client_overhead"]] == [1, 4]
    assert "tokens/s in all" in out and "raw httpx loop" in out and "loaded here" in out and "overhead" in out
    assert (tmp_path / "served.png").stat().st_size > 0


@pytest.mark.served
@pytest.mark.slow
def test_the_playground_under_colabs_widget_rule_with_a_served_model(vllm_server, local):
    """The emulated Colab page (only in-request widget messages apply) with the server's URL as the model."""
    from jupyter_client.manager import start_new_kernel
    from test_colab_kernel import FrontEnd, generating

    secret = "sk-playground-secret-998877"  # the server takes any key; it must never reach the page or history
    manager, client = start_new_kernel(kernel_name="python3", env={**os.environ, "OPT_API_KEY": secret})
    try:
        front = FrontEnd(manager, client)
        front.run(f"from helpers.playground.app import Playground\napp = Playground(model={vllm_server.url!r}, "
                  "device='cpu')\napp.refresh_seconds = 0\napp", timeout=180)
        page = front.page
        assert "served at" in page.value("opt-model-status") or vllm_server.url in page.value("opt-model-status")
        front.set("opt-prompt", value=PROMPTS[0])
        labels = page.models[page.find("opt-preset")]["_options_labels"]
        front.set("opt-preset", index=labels.index("the tutorial's greedy"))
        front.set("opt-max-new-tokens", value=16)
        front.done(front.click("opt-generate"), 120)
        run = front.history()[-1]
        expected = generate(local[0], local[1], PROMPTS[0], GREEDY, top_logprobs=5)
        assert run["finish_reason"] == "length" and run["output"] == expected.text and run["model"] == vllm_server.url
        assert len(set(page.changes[(page.find("opt-output"), "value")])) >= 3, "the text arrived at once"
        # Probabilities: each token's tooltip and its alternatives come from the server's logprobs
        front.done(front.comm(page.find("opt-tabs"), {"method": "update", "state": {"selected_index": 1},
                                                      "buffer_paths": []}))
        children = page.models[page.find("opt-tokens")]["children"]
        tokens = [page.models[c.removeprefix("IPY_MODEL_")] for c in children[1:]]
        assert len(tokens) == 16 and all("%" in t["tooltip"] for t in tokens)
        front.done(front.comm(children[1].removeprefix("IPY_MODEL_"), {"method": "custom",
                                                                      "content": {"event": "click"}}))
        shown = [s["description"] for s in page.models.values() if "opt-alternative" in s.get("_dom_classes", ())]
        top = [tokenizer_text for _, tokenizer_text, _ in expected.tokens[0].top]
        assert len(shown) >= 2 and any(t.strip() and t.strip() in " ".join(shown) for t in top), (shown, top)
        # Stop: the click is handled inside the run, which ends `stopped`
        front.set("opt-max-new-tokens", value=480)
        started = front.click("opt-generate")
        front.read(generating(front, 3), 120)
        stop = front.click("opt-stop")
        front.done(started, 60)
        assert front.busy_at[stop] < front.idle_at[stop] <= front.idle_at[started]
        assert "finished: stopped" in page.text("opt-status")
        runs = front.history()
        assert runs[-1]["finish_reason"] == "stopped" and runs[-1]["new_tokens"] < 480
        assert all(r["model"] == vllm_server.url for r in runs)  # which server answered
        exported = front.stdout[front.run("print(app.history_json(), app.history_csv(), app.history_panel.view.value,"
                                          " app.message.value, app.status.value)")]
        assert secret not in exported and secret not in json.dumps(page.models)
        # beam search: refused by name in the app's message, nothing sent, the app still usable
        front.set("opt-do-sample", value=False)
        front.set("opt-num-beams", value=3)
        front.set("opt-max-new-tokens", value=8)
        front.done(front.click("opt-generate"), 60)
        message = page.text("opt-message")
        assert "beam search" in message and "Traceback" not in message and "Something failed" not in message
        assert len(front.history()) == len(runs)
        front.set("opt-num-beams", value=1)
        front.done(front.click("opt-generate"), 60)
        assert front.history()[-1]["new_tokens"] == 8 and "finished: length" in page.text("opt-status")
        assert not page.dropped, [m["content"] for m in page.dropped[:3]]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_local_model_never_imports_the_client_library(tiny_pre_folder):
    """The openai client (a large import) is loaded only for a served model: a local generate, the playground's
    module and the registry leave it out (under a tight `ulimit -v` it was what ran out of memory)."""
    import subprocess
    import sys

    code = ("import sys\nfrom helpers import generate, load_model, GenerationSettings\nimport helpers.playground.app\n"
            f"m, t, _ = load_model({str(tiny_pre_folder)!r})\n"
            "generate(m, t, 'Hello', GenerationSettings.greedy(max_new_tokens=2))\n"
            "print('openai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"

