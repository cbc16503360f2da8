// A client in another language: Node's @grpc/grpc-js, loading proto/imageworker_v1.proto at run time with
// @grpc/proto-loader, calling Rotate and Classify with no deadline (grpc-js's default).
//
//     NODE_PATH=DIR/node_modules node client.js ADDRESS PROTO_DIR JPEG GOOGLEAPIS_DIR
//
// GOOGLEAPIS_DIR holds google/rpc/status.proto (the batch RPCs' item errors; googleapis-common-protos ships it).
//
// Both calls start at once, so on a fresh worker each arrives before the face model has loaded.
// Prints one JSON object: each RPC's status code name and, when OK, what its answer says.
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, protoDir, imagePath, googleapisDir] = process.argv.slice(2);
const definition = protoLoader.loadSync("imageworker_v1.proto", {
  includeDirs: [protoDir, googleapisDir], longs: Number,
});
const v1 = grpc.loadPackageDefinition(definition).imageworker.v1;
const client = new v1.ImageWorker(address, grpc.credentials.createInsecure());
const image = fs.readFileSync(imagePath);

function call(method, request, summary) {
  return new Promise((resolve) => {
    client[method](request, (error, reply) => {
      if (error) {
        resolve({ code: grpc.status[error.code], details: error.details });
      } else {
        resolve({ code: "OK", ...summary(reply) });
      }
    });
  });
}

Promise.all([
  call("Rotate", { image, degrees: 90 }, (r) => ({ width: r.width, height: r.height, bytes: r.image.length })),
  call("Classify", { image }, (r) => ({ label: r.label })),
]).then(([rotate, classify]) => {
  console.log(JSON.stringify({ Rotate: rotate, Classify: classify }));
  client.close();
});
