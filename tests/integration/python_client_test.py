"""Python grpcio against the real server: server reflection lists every service and serves their
descriptors; Generate streams in order from a plain grpcio client; health Check answers SERVING.
Run by ctest with /usr/bin/python3 (Debian's python3-grpcio); the message modules are generated at
build time by `protoc --python_out` into $FLUXSERVE_PYDIR."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.environ["FLUXSERVE_PYDIR"])

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402

import fluxserve_py  # noqa: E402
from fluxserve.v1 import image_service_pb2 as img  # noqa: E402
import health_pb2  # noqa: E402  (generated at top level: grpc.health would clash with grpcio)
import reflection_pb2 as refl  # noqa: E402

EXPECTED_SERVICES = {
    "fluxserve.v1.ImageService",
    "fluxserve.v1.ModelService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = fluxserve_py.Server(os.environ["FLUXSERVE_BIN"],
                                         os.environ["FLUXSERVE_MODELS_DIR"])
        cls.channel = grpc.insecure_channel(cls.server.address)
        check = fluxserve_py.unary_unary(cls.channel, "/grpc.health.v1.Health/Check",
                                         health_pb2.HealthCheckResponse)
        import time
        deadline = time.time() + 60
        while True:
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.time() > deadline:
                raise RuntimeError("never SERVING:\n" + cls.server.log_text())
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.stop()
        log = cls.server.log_text()
        cls.server.close()
        if code != 0:
            raise AssertionError(f"fluxserve exited {code} after SIGTERM:\n{log}")

    def reflect(self, **request):
        info = fluxserve_py.stream_stream(
            self.channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            refl.ServerReflectionResponse)
        responses = list(info(iter([refl.ServerReflectionRequest(**request)]), timeout=10))
        self.assertEqual(len(responses), 1)
        return responses[0]

    def test_reflection_lists_every_service(self):
        resp = self.reflect(list_services="")
        names = {s.name for s in resp.list_services_response.service}
        self.assertTrue(EXPECTED_SERVICES <= names, f"listed: {sorted(names)}")

    def test_reflection_serves_the_image_service_descriptor(self):
        resp = self.reflect(file_containing_symbol="fluxserve.v1.ImageService")
        self.assertEqual(resp.WhichOneof("message_response"), "file_descriptor_response")
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in resp.file_descriptor_response.file_descriptor_proto]
        by_name = {f.name: f for f in files}
        self.assertIn("fluxserve/v1/image_service.proto", by_name)
        svc = by_name["fluxserve/v1/image_service.proto"].service[0]
        self.assertEqual(svc.name, "ImageService")
        generate = {m.name: m for m in svc.method}["Generate"]
        self.assertTrue(generate.server_streaming)
        self.assertFalse(generate.client_streaming)
        resp = self.reflect(file_containing_symbol="no.such.Symbol")
        self.assertEqual(resp.WhichOneof("message_response"), "error_response")
        self.assertEqual(resp.error_response.error_code, grpc.StatusCode.NOT_FOUND.value[0])

    def test_generate_streams_in_order_and_seeds_reproduce(self):
        generate = fluxserve_py.unary_stream(self.channel, "/fluxserve.v1.ImageService/Generate",
                                             img.GenerateResponse)
        req = img.GenerateRequest(prompt="a red fox", width=64, height=64, num_inference_steps=3,
                                  max_sequence_length=32, seed=123)
        events = list(generate(req, timeout=60))
        kinds = [e.WhichOneof("event") for e in events]
        self.assertEqual(kinds, ["queued"] + ["progress"] * 4 + ["result"])
        self.assertEqual([e.progress.step for e in events[1:5]], [0, 1, 2, 3])
        result = events[-1].result
        self.assertEqual(result.seed, 123)
        self.assertEqual(result.model, "tiny-flux")
        self.assertEqual((result.width, result.height), (64, 64))
        self.assertTrue(result.images[0].data.startswith(b"\x89PNG\r\n\x1a\n"))
        again = list(generate(req, timeout=60))[-1].result
        self.assertEqual(again.images[0].data, result.images[0].data)

    def test_invalid_request_status_reaches_python(self):
        generate = fluxserve_py.unary_stream(self.channel, "/fluxserve.v1.ImageService/Generate",
                                             img.GenerateResponse)
        req = img.GenerateRequest(prompt="x", width=64, height=64, num_inference_steps=0)
        with self.assertRaises(grpc.RpcError) as cm:
            list(generate(req, timeout=30))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("num_inference_steps", cm.exception.details())


if __name__ == "__main__":
    unittest.main(verbosity=2)
