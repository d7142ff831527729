"""lesionsynth services: thin BentoML + gRPC adapters over models/ (no ML logic here)."""

import os

# BentoML 1.4.39 makes an OpenTelemetry span for every HTTP request, even at its default trace sample rate
# of 0, and they accumulate: a bare BentoML service grew ~5 KB of RSS per request, linearly, over 30,000
# requests (tracemalloc: opentelemetry.sdk.trace._Span and its attributes). We export no traces, so the
# OpenTelemetry SDK is off unless the operator sets OTEL_SDK_DISABLED=false (and configures BentoML's
# tracing exporter). Set here, before any service module builds BentoML's tracer provider.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
