"""`repliq serve`, `repliq ask`, `repliq chat` and `repliq demo`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from core.config import Settings

if TYPE_CHECKING:
    pass


def _add_endpoint(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    parser.add_argument("--host", default=None, help="address (default: from config, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: from config, 50051)")
    if not serving:
        parser.add_argument("--timeout", type=float, default=10.0, help="deadline per request in seconds")


def _add_request_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--language", default="", help="reply language hint: ru, en or uk (default: detect)")
    parser.add_argument("--top-k", type=int, default=0, help="candidates to show (default: server default)")
    parser.add_argument("--explain", action="store_true", help="show per-stage scores and feature contributions")
    generate = parser.add_mutually_exclusive_group()
    generate.add_argument("--generate", dest="generate", action="store_const", const=True, default=None,
                          help="ask for generated candidates too")
    generate.add_argument("--no-generate", dest="generate", action="store_const", const=False,
                          help="bank phrases only")


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the gRPC server (SIGTERM drains requests in flight)")
    _add_endpoint(serve, serving=True)
    serve.add_argument("--workers", type=int, default=None, help="requests that run at once (more wait in the queue)")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="serve Prometheus metrics on http://HOST:PORT/metrics (default: from config; 0 = off)")
    serve.add_argument("--force-unguarded-policy", action="store_true",
                       help="serve an RL policy (blender-rl) that failed its guard; for inspection only")
    serve.set_defaults(func=run_serve)

    ask = commands.add_parser("ask", help="send one message to a running server and print the answer")
    ask.add_argument("text", help="the user's message")
    _add_endpoint(ask, serving=False)
    _add_request_flags(ask)
    ask.set_defaults(func=run_ask)

    chat = commands.add_parser("chat", help="interactive terminal chat with a running server")
    _add_endpoint(chat, serving=False)
    _add_request_flags(chat)
    chat.add_argument("--context-turns", type=int, default=6, help="turns of history sent with each message")
    chat.set_defaults(func=run_chat)

    demo = commands.add_parser("demo", help="a short scripted Russian/English conversation with a running server")
    _add_endpoint(demo, serving=False)
    demo.set_defaults(func=run_demo)


def _server_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    changes = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    if getattr(args, "workers", None):
        changes["max_workers"] = args.workers
    if getattr(args, "metrics_port", None) is not None:
        changes["metrics_port"] = args.metrics_port
    if getattr(args, "force_unguarded_policy", False):
        settings = replace(settings, ranker=replace(settings.ranker, force_unguarded=True))
    return replace(settings, server=replace(settings.server, **changes))


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.server import bind_server, serve_forever

    settings = _server_settings(args, settings)
    # Listen first: while the models load (seconds to minutes), health checks read NOT_SERVING and calls get
    # UNAVAILABLE, instead of a refused connection a load balancer cannot tell from a dead replica.
    running = bind_server(settings.server, home=settings.home)
    print(f"repliq listening on {settings.server.host}:{running.port} (NOT_SERVING while loading)",
          file=sys.stderr, flush=True)
    assembled = loop = exporter = None
    try:
        assembled = build_pipeline(settings)
        from dialog.serving.admin import admin_service
        from dialog.serving.feedback import build_serving_loop

        loop = build_serving_loop(settings, assembled.pipeline.reranker)
        running.attach(assembled.pipeline, settings.retrieval.top_k, loop=loop,
                       admin=admin_service(settings, assembled))
        print(f"repliq serving on {settings.server.host}:{running.port}", file=sys.stderr, flush=True)
        if settings.server.metrics_port:
            from dialog.serving.metrics import start_metrics

            exporter = start_metrics(settings.server.host, settings.server.metrics_port)
            print(f"metrics on http://{settings.server.host}:{exporter.port}/metrics", file=sys.stderr, flush=True)
        serve_forever(running, settings.server.drain_grace_s)
    finally:
        running.stop(0)
        if exporter is not None:
            exporter.close()
        if loop is not None:
            loop.close()
        if assembled is not None:
            assembled.close()
    return 0


def _client(args: argparse.Namespace, settings: Settings):
    from dialog.serving.client import ChatClient

    settings = _server_settings(args, settings)
    return ChatClient(settings.server.host, settings.server.port, timeout_s=args.timeout)


def _print_response(response, explain: bool) -> None:
    if not response.candidates:
        print("(no answer)")
        return
    for rank, candidate in enumerate(response.candidates, 1):
        prefix = "→" if rank == 1 else " "
        print(f"{prefix} [{candidate.source}:{candidate.phrase_id}] {candidate.score:+.3f}  {candidate.text}")
        if explain:
            stages = ", ".join(f"{k}={v:.3f}" for k, v in sorted(candidate.stage_scores.items()))
            print(f"      stages: {stages}")
            for item in sorted(candidate.contributions, key=lambda c: -abs(c.contribution))[:8]:
                print(f"      {item.feature:24} value={item.value:.3f} contribution={item.contribution:+.3f}")


def run_ask(args: argparse.Namespace, settings: Settings) -> int:
    import grpc

    client = _client(args, settings)
    try:
        response = client.respond([("user", args.text)], top_k=args.top_k or 3, language=args.language,
                                  explain=args.explain, generate=args.generate)
    except grpc.RpcError as exc:
        print(f"repliq: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    _print_response(response, args.explain)
    return 0


def run_chat(args: argparse.Namespace, settings: Settings) -> int:
    import grpc

    client = _client(args, settings)
    history: list[tuple[str, str]] = []
    print("repliq chat — empty line or Ctrl-D to quit")
    try:
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:
                break
            if not text:
                break
            history.append(("user", text))
            try:
                response = client.respond(history[-args.context_turns:], top_k=args.top_k or 1,
                                          language=args.language, explain=args.explain,
                                          generate=args.generate)
            except grpc.RpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}")
                history.pop()
                continue
            if response.candidates:
                history.append(("bot", response.candidates[0].text))
                print(f"bot> {response.candidates[0].text}")
                if args.explain or (args.top_k or 1) > 1:
                    _print_response(response, args.explain)
            else:
                print("bot> (no answer)")
    finally:
        client.close()
    return 0


DEMO_LINES = (
    "Привет! Как дела?",
    "Какая сегодня погода? Обещали дождь.",
    "Hi there! How is your day going?",
    "What's the weather like today? I might need an umbrella.",
    "Посоветуй, пожалуйста, какую-нибудь книгу на выходные.",
    "I just got a puppy and have no idea how to train him.",
)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(args, settings)
    try:
        client.wait_until_serving(timeout_s=120)
        for line in DEMO_LINES:
            response = client.respond([("user", line)], top_k=1)
            answer = response.candidates[0].text if response.candidates else "(no answer)"
            print(f"you> {line}\nbot> {answer}   [{response.language}]\n")
    finally:
        client.close()
    return 0
