// Run a TF.js graph model from disk on TF.js's pure-JS CPU backend and write chosen node outputs as raw float32.
//
//   node run_tfjs.mjs MANIFEST.json
//
// MANIFEST: {"modules": "<folder holding node_modules/@tensorflow/...>", "model": "<model.json>",
//            "input": "image_tensor", "outputs": ["Postprocessor/Slice", ...], "out_dir": "<folder>",
//            "images": [{"name": "a", "path": "<raw uint8 HWC file>", "height": H, "width": W,
//                        "extra_outputs": ["Preprocessor/sub"]}]}
// Writes <out_dir>/<index>_<output index>.f32 (little-endian float32, C order) per image and output, and
// <out_dir>/summary.json with versions, and per image its outputs' files and shapes and the milliseconds it took.
// Driven by tests/golden/make_tfjs_golden.py; no tfjs-node, no fetch: the IOHandler reads the files with fs.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const manifest = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
// The packages live in a side folder (.cache/tfjs-runner), not beside this script.
const require = createRequire(path.join(path.resolve(manifest.modules), "package.json"));
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const { loadGraphModel } = require("@tensorflow/tfjs-converter");

function fileHandler(modelJson) {
  // The IOHandler contract of tfjs-core's io: load() gives the topology, the flat weight specs and one buffer.
  return {
    async load() {
      const model = JSON.parse(fs.readFileSync(modelJson, "utf8"));
      const directory = path.dirname(modelJson);
      const weightSpecs = [];
      const chunks = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) chunks.push(fs.readFileSync(path.join(directory, shard)));
      }
      const joined = Buffer.concat(chunks);
      const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        weightSpecs,
        weightData,
      };
    },
  };
}

async function main() {
  await tf.setBackend("cpu");
  await tf.ready();
  const model = await loadGraphModel(fileHandler(manifest.model));
  // A fetched Const (the anchors) comes back as the model's own weight tensor: never dispose those.
  const weightIds = new Set(Object.values(model.weights).flat().map((tensor) => tensor.id));
  fs.mkdirSync(manifest.out_dir, { recursive: true });
  const summary = {
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
    backend: tf.getBackend(),
    versions: { "tfjs-core": tf.version_core, ...readVersions() },
    images: [],
  };
  for (const [index, image] of manifest.images.entries()) {
    const pixels = fs.readFileSync(image.path);
    if (pixels.length !== image.height * image.width * 3) {
      throw new Error(`${image.path}: ${pixels.length} bytes, expected ${image.height}x${image.width}x3`);
    }
    const names = [...manifest.outputs, ...(image.extra_outputs || [])];
    // TF.js has no uint8 tensors: the uint8 placeholder is fed int32 (exact), as tfjs's own coco-ssd does.
    const input = tf.tensor4d(Int32Array.from(pixels), [1, image.height, image.width, 3], "int32");
    const start = performance.now();
    // executeAsync: the preprocessor's map is a while loop (Enter/Merge/Switch/NextIteration, TensorArrays).
    const results = await model.executeAsync({ [manifest.input]: input }, names);
    const outputs = {};
    for (const [k, tensor] of results.entries()) {
      const values = await tensor.data();
      const file = `${index}_${k}.f32`;
      const floats = Float32Array.from(values);
      fs.writeFileSync(path.join(manifest.out_dir, file), Buffer.from(floats.buffer));
      outputs[names[k]] = { file, shape: tensor.shape, dtype: tensor.dtype };
    }
    const ms = performance.now() - start;
    tf.dispose([input, ...results.filter((tensor) => !weightIds.has(tensor.id))]);
    summary.images.push({ name: image.name, outputs, ms });
    process.stderr.write(`${image.name}: ${ms.toFixed(0)} ms\n`);
  }
  fs.writeFileSync(path.join(manifest.out_dir, "summary.json"), JSON.stringify(summary, null, 2));
}

function readVersions() {
  const versions = {};
  for (const name of ["tfjs-converter", "tfjs-backend-cpu"]) {
    versions[name] = require(`@tensorflow/${name}/package.json`).version;
  }
  return versions;
}

main().catch((error) => {
  process.stderr.write(`run_tfjs: ${error.stack || error}\n`);
  process.exit(1);
});
