"""A stand-in for grpcurl (https://github.com/fullstorydev/grpcurl) when it is not installed, for
tests/test_readme_examples.py: the README's ``grpcurl -plaintext [-H 'k: v'] -d JSON HOST:PORT
pkg.Service/Method`` through the generated stubs' descriptors, each reply printed as JSON (one object per
message, as grpcurl does). Only what the README uses; not a general grpcurl."""

from __future__ import annotations

import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory

import services.grpc_stubs.classifier_pb2
import services.grpc_stubs.synthesis_pb2
import services.grpc_stubs.training_pb2  # noqa: F401  (registers the descriptors)


def main(argv: list[str]) -> int:
    data, metadata, rest = "{}", [], []
    args = iter(argv)
    for arg in args:
        if arg == "-plaintext":
            continue
        if arg == "-d":
            data = next(args)
        elif arg == "-H":
            key, _, value = next(args).partition(":")
            metadata.append((key.strip().lower(), value.strip()))
        elif arg.startswith("-"):
            raise SystemExit(f"grpcurl stand-in: unsupported flag {arg}")
        else:
            rest.append(arg)
    address, full_method = rest
    service_name, method_name = full_method.split("/")
    method = descriptor_pool.Default().FindServiceByName(service_name).FindMethodByName(method_name)
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(data, request_class())
    path = f"/{service_name}/{method_name}"
    with grpc.insecure_channel(address) as channel:
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = kind(
            path,
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        replies = call(request, metadata=metadata or None, timeout=600)
        for reply in replies if method.server_streaming else [replies]:
            print(json_format.MessageToJson(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
