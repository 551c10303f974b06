-- route-to-spinexr.lua: Orthanc auto-routing of spine radiographs to spinexr-node.
--
-- When a study becomes stable (no new instance for "StableAge" seconds), the instances that
-- qualify are forwarded to the node, by C-STORE (DicomModalities entry) or by STOW-RS
-- (DicomWeb "Servers" entry), as an asynchronous Orthanc job:
--
--   * an instance qualifies when its Modality is CR/DX/DR, its SOP class is an image class
--     (not SR, presentation state, key object selection or secondary capture), and one of
--     BodyPartExamined, StudyDescription, SeriesDescription, ProtocolName, the requested or
--     performed procedure description or the Anatomic Region's meaning names the spine;
--   * the node's own results are never forwarded (no loops): objects with the node's
--     Manufacturer (also in Contributing Equipment), UIDs under the node's UID root, a Series
--     Description starting with the node's prefix, or one of the node's Device UIDs;
--   * an instance is forwarded once: the job id is written to its metadata "SpinexrRouted"
--     (declare it under "UserMetadata" in orthanc.json). When the study changes again
--     (a late image, or the node's results arriving) only the new qualifying instances go.
--     If a forwarding job fails, the mark is removed, so the instances go again the next
--     time the study becomes stable (or resubmit the job: POST /jobs/<id>/resubmit).
--
-- Every setting below can be overridden in orthanc.json, section "SpinexrRouting", without
-- editing this file, e.g. "SpinexrRouting": { "Route": "dicomweb", "Modalities": ["CR", "DX"] }.
-- One log line per stable study says what was forwarded and why the rest was not (UIDs and
-- counts only, never patient data).

local settings = {
  -- "dimse": C-STORE to DicomModalities[Modality]; "dicomweb": STOW-RS to DicomWeb.Servers[DicomWebServer]
  Route = "dimse",
  Modality = "spinexr",
  DicomWebServer = "spinexr",

  -- What is analysed: these modalities ...
  Modalities = { "CR", "DX", "DR" },
  -- ... when a text field, upper-cased with everything but letters and digits removed
  -- ("L-SPINE" -> "LSPINE"), contains one of these words ...
  SpineWords = {
    "SPINE", "LSPINE", "TSPINE", "CSPINE", "LUMBAR", "THORAC", "CERVICAL", "COLUMN",
    "RACHIS", "VERTEBR", "SCOLIO", "SACRUM", "COCCYX", "WIRBELS", "COLONNA", "COLUNA",
  },
  -- ... or, split at non-alphanumerics, has one of these whole tokens (short abbreviations
  -- that would match inside other words: German LWS/BWS/HWS = lumbar/thoracic/cervical).
  SpineTokens = { "LWS", "BWS", "HWS" },

  -- How the node's own objects are recognised (node/outputs/provenance.py):
  NodeManufacturer = "spinexr-node project",       -- spinexr.node.MANUFACTURER
  NodeUidRoot = "1.2.826.0.1.3680043.10.1404",     -- settings node.uid_root
  NodeSeriesPrefix = "AI spinexr",                 -- settings output.series_description_prefix
  NodeDeviceUids = {},                             -- DeviceUID of the site's bundles (optional)

  -- Instance metadata that records the forwarding job (declared in "UserMetadata").
  MetadataName = "SpinexrRouted",
}

-- SOP classes the node produces or that are never images to analyse (prefix match).
local RESULT_SOP_CLASS_PREFIXES = {
  "1.2.840.10008.5.1.4.1.1.88.",   -- all structured reports, key object selection
  "1.2.840.10008.5.1.4.1.1.11.",   -- all presentation states (GSPS, colour, ...)
  "1.2.840.10008.5.1.4.1.1.7.",    -- multi-frame secondary capture
  "1.2.840.10008.5.1.4.1.1.104.",  -- encapsulated PDF / CDA
}
local RESULT_SOP_CLASSES = { ["1.2.840.10008.5.1.4.1.1.7"] = true }  -- secondary capture
local RESULT_MODALITIES = { SR = true, PR = true, KO = true, OT = true, SC = true, DOC = true }

local PREFIX = "spinexr route: "

-- ---------------------------------------------------------------- settings from orthanc.json

local function apply_overrides()
  local config = GetOrthancConfiguration()
  local section = config and config["SpinexrRouting"]
  if type(section) ~= "table" then
    return
  end
  for key, value in pairs(section) do
    if settings[key] == nil then
      error(PREFIX .. "unknown setting SpinexrRouting." .. tostring(key))
    end
    settings[key] = value
  end
end

apply_overrides()
if settings.Route ~= "dimse" and settings.Route ~= "dicomweb" then
  error(PREFIX .. "SpinexrRouting.Route must be \"dimse\" or \"dicomweb\", not " .. tostring(settings.Route))
end

local function set_of(list, transform)
  local out = {}
  for _, v in ipairs(list or {}) do
    out[transform and transform(v) or v] = true
  end
  return out
end

local MODALITIES = set_of(settings.Modalities, string.upper)
local TOKENS = set_of(settings.SpineTokens, string.upper)
local DEVICE_UIDS = set_of(settings.NodeDeviceUids)
local WORDS = {}
for _, w in ipairs(settings.SpineWords) do
  table.insert(WORDS, (string.upper(w):gsub("[^%w]", "")))
end
local UID_ROOT = settings.NodeUidRoot .. "."
local NODE_MANUFACTURER = string.upper(settings.NodeManufacturer)
local SERIES_PREFIX = string.upper(settings.NodeSeriesPrefix)

-- Whether "MetadataName" is declared; without it the marks live in memory only (lost when
-- Orthanc restarts).
local metadata_declared = false
do
  local user = GetOrthancConfiguration()["UserMetadata"]
  metadata_declared = type(user) == "table" and user[settings.MetadataName] ~= nil
  if not metadata_declared then
    print(PREFIX .. "WARNING: declare \"UserMetadata\": { \"" .. settings.MetadataName ..
      "\": 4242 } in orthanc.json so that routed instances are remembered across restarts")
  end
end
local routed_in_memory = {}   -- instance id -> job id
local our_jobs = {}           -- job id -> { instances = {...}, study = uid }

print(PREFIX .. "loaded (route " .. settings.Route .. " to " ..
  (settings.Route == "dimse" and settings.Modality or settings.DicomWebServer) .. ")")

-- ---------------------------------------------------------------- helpers

local function text(value)
  if type(value) == "string" then
    return value
  end
  return ""
end

local function trim_upper(value)
  return string.upper((text(value):gsub("^%s+", ""):gsub("%s+$", "")))
end

local function starts_with(value, prefix)
  return string.sub(value, 1, #prefix) == prefix
end

local function names_spine(value)
  local upper = string.upper(text(value))
  local squashed = upper:gsub("[^%w]", "")
  for _, word in ipairs(WORDS) do
    if word ~= "" and string.find(squashed, word, 1, true) then
      return true
    end
  end
  for token in upper:gmatch("%w+") do
    if TOKENS[token] then
      return true
    end
  end
  return false
end

local function is_result_sop_class(uid)
  uid = text(uid)
  if RESULT_SOP_CLASSES[uid] then
    return true
  end
  for _, prefix in ipairs(RESULT_SOP_CLASS_PREFIXES) do
    if starts_with(uid, prefix) then
      return true
    end
  end
  return false
end

-- True when the tags (series main tags or an instance's simplified tags) carry the node's
-- signature.
local function is_node_object(tags)
  if trim_upper(tags["Manufacturer"]) == NODE_MANUFACTURER then
    return true
  end
  if starts_with(text(tags["SOPInstanceUID"]), UID_ROOT)
    or starts_with(text(tags["SeriesInstanceUID"]), UID_ROOT) then
    return true
  end
  if SERIES_PREFIX ~= "" and starts_with(trim_upper(tags["SeriesDescription"]), SERIES_PREFIX) then
    return true
  end
  if DEVICE_UIDS[text(tags["DeviceUID"])] then
    return true
  end
  local contributing = tags["ContributingEquipmentSequence"]
  if type(contributing) == "table" then
    for _, item in ipairs(contributing) do
      if type(item) == "table" and trim_upper(item["Manufacturer"]) == NODE_MANUFACTURER then
        return true
      end
    end
  end
  return false
end

-- Reason an instance is not forwarded, or nil when it qualifies.
local function skip_reason(tags, study_tags)
  if is_node_object(tags) then
    return "node result"
  end
  if is_result_sop_class(tags["SOPClassUID"]) or RESULT_MODALITIES[trim_upper(tags["Modality"])] then
    return "not an image"
  end
  if not MODALITIES[trim_upper(tags["Modality"])] then
    return "modality"
  end
  local fields = {}
  for _, keyword in ipairs({
    "BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription",
  }) do
    table.insert(fields, text(tags[keyword]))
  end
  table.insert(fields, text(study_tags["StudyDescription"]))
  local regions = tags["AnatomicRegionSequence"]
  if type(regions) == "table" then
    for _, item in ipairs(regions) do
      if type(item) == "table" then
        table.insert(fields, text(item["CodeMeaning"]))
      end
    end
  end
  for _, field in ipairs(fields) do
    if names_spine(field) then
      return nil
    end
  end
  return "not spine"
end

local function routed_job(instance_id)
  if routed_in_memory[instance_id] then
    return routed_in_memory[instance_id]
  end
  if not metadata_declared then
    return nil
  end
  local answer = RestApiGet("/instances/" .. instance_id .. "/metadata?expand")
  local metadata = answer and ParseJson(answer) or {}
  return metadata[settings.MetadataName]
end

local function mark(instance_id, job_id)
  routed_in_memory[instance_id] = job_id
  if metadata_declared then
    RestApiPut("/instances/" .. instance_id .. "/metadata/" .. settings.MetadataName, job_id)
  end
end

local function unmark(instance_id)
  routed_in_memory[instance_id] = nil
  if metadata_declared then
    RestApiDelete("/instances/" .. instance_id .. "/metadata/" .. settings.MetadataName)
  end
end

local function submit(instances)
  local body = DumpJson({ Resources = instances, Asynchronous = true }, true)
  local uri
  if settings.Route == "dimse" then
    uri = "/modalities/" .. settings.Modality .. "/store"
  else
    uri = "/dicom-web/servers/" .. settings.DicomWebServer .. "/stow"
  end
  local answer = RestApiPost(uri, body)
  if answer == nil then
    return nil
  end
  local job = ParseJson(answer)
  return job and job["ID"]
end

local function summary(counts)
  local parts = {}
  for _, reason in ipairs({
    "already routed", "node result", "not an image", "modality", "not spine", "unreadable",
  }) do
    if counts[reason] then
      table.insert(parts, reason .. " " .. counts[reason])
    end
  end
  if #parts == 0 then
    return "none"
  end
  return table.concat(parts, ", ")
end

-- ---------------------------------------------------------------- Orthanc callbacks

function OnStableStudy(studyId, tags, metadata)
  local study_uid = text(tags["StudyInstanceUID"])
  local forward = {}
  local counts = {}
  local function skip(reason, n)
    counts[reason] = (counts[reason] or 0) + (n or 1)
  end

  local answer = RestApiGet("/studies/" .. studyId .. "/series")
  if answer == nil then
    print(PREFIX .. "study " .. study_uid .. ": cannot list its series")
    return
  end
  for _, series in ipairs(ParseJson(answer)) do
    local series_tags = series["MainDicomTags"] or {}
    local instances = series["Instances"] or {}
    -- Whole series of the node's results or of other modalities are skipped unread.
    if is_node_object(series_tags) then
      skip("node result", #instances)
    elseif RESULT_MODALITIES[trim_upper(series_tags["Modality"])] then
      skip("not an image", #instances)
    elseif not MODALITIES[trim_upper(series_tags["Modality"])] then
      skip("modality", #instances)
    else
      for _, id in ipairs(instances) do
        if routed_job(id) then
          skip("already routed")
        else
          local instance = RestApiGet("/instances/" .. id .. "/simplified-tags")
          local reason = "unreadable"
          if instance ~= nil then
            reason = skip_reason(ParseJson(instance), tags)
          end
          if reason == nil then
            table.insert(forward, id)
          else
            skip(reason)
          end
        end
      end
    end
  end

  if #forward == 0 then
    print(PREFIX .. "study " .. study_uid .. ": nothing to forward (skipped: " .. summary(counts) .. ")")
    return
  end
  local job = submit(forward)
  if job == nil then
    print(PREFIX .. "study " .. study_uid .. ": ERROR, could not submit " .. #forward ..
      " instance(s) via " .. settings.Route .. " (is the modality/server configured?)")
    return
  end
  our_jobs[job] = { instances = forward, study = study_uid }
  for _, id in ipairs(forward) do
    mark(id, job)
  end
  print(PREFIX .. "study " .. study_uid .. ": forwarding " .. #forward .. " instance(s) via " ..
    settings.Route .. " in job " .. job .. " (skipped: " .. summary(counts) .. ")")
end

function OnJobSuccess(jobId)
  local job = our_jobs[jobId]
  if job then
    print(PREFIX .. "study " .. job.study .. ": job " .. jobId .. " done")
    our_jobs[jobId] = nil
  end
end

function OnJobFailure(jobId)
  local job = our_jobs[jobId]
  if job then
    for _, id in ipairs(job.instances) do
      unmark(id)
    end
    our_jobs[jobId] = nil
    print(PREFIX .. "study " .. job.study .. ": ERROR, job " .. jobId .. " failed; its " ..
      #job.instances .. " instance(s) go again when the study next becomes stable " ..
      "(or POST /jobs/" .. jobId .. "/resubmit)")
  end
end
