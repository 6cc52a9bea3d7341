// Drive dtfs-emu's production dialect with the official Genesys JavaScript
// SDK, as a check that the shapes are the ones the SDK models. Not part of
// the test suites (the SDK is not vendored); run it by hand:
//
//   mkdir /tmp/sdk && cd /tmp/sdk && npm install purecloud-platform-client-v2@262.0.0
//   build/tools/emu/dtfs-emu --data tools/sample-data \
//       --data tools/sample-data/production --job-delay 10 &   # prints its port
//   NODE_PATH=/tmp/sdk/node_modules node tools/emu/sdk-check.js 127.0.0.1:PORT
//
// Prints "sdk-check: ok" or throws at the first difference.
'use strict';
const assert = require('assert');
const pc = require('purecloud-platform-client-v2');

async function main() {
  const [host, port] = process.argv[2].split(':');
  const client = pc.ApiClient.instance;
  client.config.setConfigPath('');
  client.setGateway({host, protocol: 'http', port});
  await client.loginClientCredentialsGrant('dtfs-demo', 'dtfs-demo-secret');
  const a = new pc.ArchitectApi();

  const list = await a.getFlowsDatatables({expand: 'schema'});
  assert.deepStrictEqual(list.entities.map(t => t.name).sort(),
                         ['Customers', 'PriceList']);
  const pl = (await a.getFlowsDatatables({name: 'price*'})).entities[0];
  assert.strictEqual(pl.name, 'PriceList');
  const rows = await a.getFlowsDatatableRows(
      pl.id, {pageNumber: 2, pageSize: 10, showbrief: false});
  assert.strictEqual(rows.total, 40);
  assert.strictEqual(rows.pageCount, 4);
  assert.strictEqual(rows.entities[0].key, 'SKU-0011');

  const t = await a.postFlowsDatatables({name: 'SdkTable', schema: {
    properties: {key: {type: 'string', title: 'K', displayOrder: 0},
                 n: {type: 'integer', displayOrder: 1, default: 3}}}});
  assert.deepStrictEqual(await a.postFlowsDatatableRows(t.id, {key: 'a/b'}),
                         {key: 'a/b', n: 3});
  assert.deepStrictEqual(
      await a.getFlowsDatatableRow(t.id, 'a/b', {showbrief: false}),
      {key: 'a/b', n: 3});
  assert.deepStrictEqual(
      await a.putFlowsDatatableRow(t.id, 'a/b', {body: {key: 'a/b', n: 5}}),
      {key: 'a/b', n: 5});
  await a.deleteFlowsDatatableRow(t.id, 'a/b');
  await assert.rejects(a.getFlowsDatatableRow(t.id, 'a/b'),
                       e => e.status === 404 &&
                            e.code === 'flows.datatables.row.not.found');

  const job = await a.postFlowsDatatableImportCsvJobs(
      t.id, {importMode: 'Append', status: 'WaitingForUpload'});
  assert.strictEqual(job.status, 'WaitingForUpload');
  const up = await fetch(job.uploadURI, {method: 'PUT',
                                         headers: job.uploadHeaders,
                                         body: 'key,n\r\nx,1\r\ny,zz\r\n'});
  assert.strictEqual(up.status, 200);
  let j;
  do {
    j = await a.getFlowsDatatableImportJob(t.id, job.id);
  } while (j.status === 'Processing');
  assert.deepStrictEqual([j.status, j.countRecordsUpdated,
                          j.countRecordsFailed], ['Succeeded', 1, 1]);
  assert.strictEqual((await a.getFlowsDatatableImportJobs(t.id, {})).total,
                     1);

  let ex = await a.postFlowsDatatableExportJobs(t.id);
  do {
    ex = await a.getFlowsDatatableExportJob(t.id, ex.id);
  } while (ex.status === 'Processing');
  assert.strictEqual(ex.status, 'Succeeded');
  const d = new pc.DownloadsApi();
  const u = await d.getDownload(ex.downloadURI.split('/').pop(),
                                {issueRedirect: false});
  assert.strictEqual(await (await fetch(u.url)).text(), 'key,n\r\nx,1\r\n');

  t.schema.properties.extra = {type: 'boolean', displayOrder: 2};
  const put = await a.putFlowsDatatable(t.id, t, {expand: 'schema'});
  assert.deepStrictEqual(Object.keys(put.schema.properties),
                         ['key', 'n', 'extra']);
  await a.deleteFlowsDatatable(t.id, {force: true});
  console.log('sdk-check: ok');
}

main().catch(e => {
  console.error('sdk-check: failed:', e);
  process.exit(1);
});
