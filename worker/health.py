"""grpc.health.v1 for the worker: the standard servicer, minus a lock-order deadlock.

grpcio-health-checking's ``set`` calls each Watch stream's send callback while
holding its own lock, and a Watch stream that closes takes that lock from a
gRPC thread: a client closing its health stream while we drain could hang the
worker's shutdown. Here the callbacks run after the lock is released.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2


class HealthServicer(health.HealthServicer):
    def set(self, service: str, status: int) -> None:
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
            callbacks = list(self._send_response_callbacks.get(service, ()))
        for send in callbacks:
            send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        with self._lock:
            if self._gracefully_shutting_down:
                return
            services = list(self._server_status)
        for service in services:
            self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        with self._lock:
            self._gracefully_shutting_down = True
