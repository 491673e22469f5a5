/* Supervisor console: live board, transcripts, queues and call monitoring.
 *
 * Plain JavaScript, no build step. Everything shown comes from the hotline API with the
 * supervisor's bearer token: the live WebSocket (/api/v1/live) and a few REST calls. Text from
 * the server only ever goes into the page through textContent.
 */
"use strict";

(() => {
  // Every label in both languages: [中文, English]. A region's English name is its id.
  const LABELS = {
    title: ["热线监控台", "Hotline supervisor console"],
    token: ["访问令牌", "Access token"],
    token_hint: [
      "粘贴 supervisor 令牌（ivr token create --role supervisor）",
      "Paste a supervisor token (ivr token create --role supervisor)"],
    connect: ["连接", "Connect"],
    disconnect: ["断开", "Disconnect"],
    status_idle: ["未连接", "Not connected"],
    status_connecting: ["连接中…", "Connecting…"],
    status_connected: ["已连接", "Connected"],
    status_reconnecting: ["连接中断，{s} 秒后重连…", "Connection lost, retrying in {s} s…"],
    status_disconnected: ["已断开", "Disconnected"],
    status_error: ["连接被拒绝", "Connection refused"],
    token_missing: ["请先粘贴访问令牌", "Paste an access token first"],
    close_4400: ["认证消息无效（4400）", "Invalid auth message (4400)"],
    close_4401: ["令牌无效、已过期或已吊销（4401）", "Token unknown, expired or revoked (4401)"],
    close_4403: ["此令牌的角色无权查看实时通话（4403）", "This token's role may not watch live calls (4403)"],
    board: ["实时通话", "Live calls"],
    col_caller: ["主叫号码", "Caller"],
    col_region: ["地区", "Region"],
    col_intent: ["意图", "Intent"],
    col_state: ["状态", "State"],
    col_wait: ["时长", "Time"],
    col_agent: ["坐席", "Agent"],
    col_verification: ["身份验证", "Verification"],
    no_calls: ["暂无进行中的通话", "No active calls"],
    regions: ["各地区坐席与排队", "Agents and queues by region"],
    reg_region: ["地区", "Region"],
    reg_registered: ["已注册", "Registered"],
    reg_available: ["空闲", "Available"],
    reg_oncall: ["通话中", "On call"],
    reg_waiting: ["排队", "Waiting"],
    no_agents: ["暂无坐席信息", "No agent information yet"],
    transcript: ["通话转写", "Transcript"],
    select_call: ["点击左侧的通话查看转写", "Select a call to see its transcript"],
    loading: ["正在加载此前的转写…", "Loading what was said so far…"],
    no_lines: ["尚无转写", "Nothing transcribed yet"],
    call_ended: ["通话已结束", "The call has ended"],
    load_failed: ["无法加载转写：{message}", "Could not load the transcript: {message}"],
    not_recognised: ["（未识别）", "(not recognised)"],
    dropped_no_speech: ["没有说话声", "no speech"],
    dropped_compression_ratio: ["不清楚", "could not hear clearly"],
    dropped_log_prob: ["不清楚", "could not hear clearly"],
    dropped_phantom: ["背景声音，不是说话", "background sound, not speech"],
    dropped_prompt_echo: ["我们提示音的回声", "an echo of our own prompt"],
    health_problems: ["服务降级：", "Running degraded:"],
    health_unreachable: ["无法读取服务状态（/ready）", "Cannot read the service state (/ready)"],
    part_ari: ["电话交换机（ARI）未连接", "PBX (ARI) not connected"],
    part_ari_requests: ["电话交换机不响应", "PBX not answering"],
    part_database: ["数据库无法写入", "database cannot be written"],
    part_node_lease: ["本节点租约未续期", "this node's lease is not renewed"],
    part_broker: ["消息代理不可达，仅显示本节点通话", "broker unreachable, this node's calls only"],
    part_asr: ["语音识别已关闭，仅按键菜单", "speech recognition off, keypad only"],
    part_vad: ["语音检测已关闭", "voice detection off"],
    part_voiceprint: ["声纹验证已关闭，转人工核验", "voiceprint check off, experts verify"],
    part_routing: ["路由规则无效，使用备用队列", "routing rules invalid, fallback queue"],
    part_asr_model: ["语音识别使用测试模型（随机权重，识别结果无意义）",
      "speech recognition runs a test model (random weights: transcripts mean nothing)"],
    part_voiceprint_model: ["声纹验证使用测试模型（随机权重，判定无意义）",
      "voiceprint check runs a test model (random weights: decisions mean nothing)"],
    models: ["模型：", "Models:"],
    model_asr: ["语音识别", "speech"],
    model_voiceprint: ["声纹", "voiceprint"],
    model_test: ["测试模型，随机权重", "test model, random weights"],
    reason_open: ["营业时间内", "open"],
    reason_closed: ["非营业时间", "closed"],
    route_region: ["路由地区", "Routed to"],
    route_agent: ["坐席", "Agent"],
    route_decision: ["最近路由决策", "Last routing decision"],
    rule: ["规则", "rule"],
    overflow_to: ["溢出至", "overflow to"],
    overflowed: ["已溢出至", "overflowed to"],
    phone: ["我的话机", "My phone"],
    monitor_via: ["监听方式", "Listen with"],
    via_browser: ["本浏览器（耳机与麦克风）", "this browser (headset)"],
    via_phone: ["我的话机", "my desk phone"],
    monitor_stop: ["结束监听", "Stop"],
    monitor_level: ["音量", "Level"],
    listen: ["监听", "Listen"],
    whisper: ["密语", "Whisper"],
    barge: ["强插", "Barge"],
    select_first: ["请先在列表中选择一个通话", "Select a call in the list first"],
    phone_needed: ["请填写您的话机（字母、数字、. _ -）", "Enter your phone (letters, digits, . _ -)"],
    monitor_sending: ["正在发起{mode}…", "Starting {mode}…"],
    monitor_ringing: ["正在呼叫您的话机 {phone}（{mode}）", "Ringing your phone {phone} ({mode})"],
    monitor_browser: ["正在本浏览器中{mode}（{target}）", "{mode} in this browser ({target})"],
    target_agent: ["坐席通话", "caller and agent"],
    target_caller: ["客户（坐席尚未接通）", "the caller (no agent yet)"],
    monitor_ended: ["监听已结束：通话已结束", "Monitoring ended: the call has ended"],
    monitor_stopped: ["监听已结束", "Monitoring stopped"],
    monitor_pbx_lost: ["监听中断：与电话交换机的连接已断开", "Monitoring cut: the PBX connection was lost"],
    monitor_revoked: ["监听中断：令牌已吊销或过期", "Monitoring cut: the token was revoked or expired"],
    monitor_lost: ["监听连接中断（{code}）", "Monitoring connection lost ({code})"],
    monitor_4404: ["该通话已结束或不存在", "That call is no longer live"],
    monitor_4409: ["坐席接通后才能密语或强插", "Whisper and barge need an agent on the call"],
    monitor_4403: ["此令牌的角色无权监听通话", "This token's role may not listen to calls"],
    monitor_4429: ["认证失败次数过多，请稍后再试", "Too many failed sign-ins; try again later"],
    mic_failed: ["无法使用麦克风：{reason}", "The microphone cannot be used: {reason}"],
    audio_failed: ["无法播放声音：{reason}", "Audio cannot be played: {reason}"],
    listen_no_audio: ["监听模式不发送您的声音", "Listen mode does not send your voice"],
    speaker_caller: ["客户", "Caller"],
    speaker_agent: ["坐席", "Agent"],
    state_ringing: ["振铃", "ringing"],
    state_greeting: ["欢迎语", "greeting"],
    state_menu: ["菜单", "menu"],
    state_routing: ["路由中", "routing"],
    state_verifying: ["验证码验证", "code check"],
    state_voice_check: ["声纹验证", "voiceprint check"],
    state_voice_enrollment: ["声纹注册", "voiceprint enrolment"],
    state_queued: ["排队中", "queued"],
    state_ringing_agent: ["呼叫坐席", "ringing agent"],
    state_connected: ["通话中", "connected"],
    state_callback: ["预约回拨", "callback"],
    state_ended: ["已结束", "ended"],
    intent_billing: ["账单", "billing"],
    intent_product_info: ["产品咨询", "product info"],
    intent_account_security: ["账户安全", "account security"],
    intent_technical_fault: ["技术故障", "technical fault"],
    intent_capacity: ["容量", "capacity"],
    intent_ticket_status: ["工单进度", "ticket status"],
    intent_complaint: ["投诉", "complaint"],
    intent_human_agent: ["人工服务", "human agent"],
    intent_unknown: ["未知", "unknown"],
    verification_accept: ["通过", "passed"],
    verification_reject: ["未通过", "failed"],
    verification_uncertain: ["待定", "uncertain"],
    verification_none: ["未验证", "not checked"],
    action_queue: ["排队", "queue"],
    action_callback: ["回拨", "callback"],
    action_after_hours: ["非工作时间", "after hours"],
    region_north: ["华北", null],
    region_east: ["华东", null],
    region_south: ["华南", null],
    region_west: ["西南", null],
    region_any: ["任意地区", null],
  };
  const LANGUAGES = ["zh", "en"];

  const TOKEN_KEY = "ivr.console.token"; // sessionStorage: gone when the tab closes
  const PHONE_KEY = "ivr.console.phone";
  const VIA_KEY = "ivr.console.monitor_via";
  const MONITOR_RATE = 8000; // what /api/v1/calls/{id}/listen carries, both ways
  const MONITOR_CLOSES = {
    1008: "monitor_revoked", 1011: "monitor_pbx_lost", 4401: "close_4401",
    4403: "monitor_4403", 4404: "monitor_4404", 4409: "monitor_4409", 4429: "monitor_4429",
  };
  const LANG_KEY = "ivr.console.lang";
  const RETRY_MAX_S = 10;
  const ENDED_LINGER_MS = 10000;
  // The server sends nothing on a resume with nothing missed; a bad token closes within moments.
  const RESUME_SETTLE_MS = 1000;
  const FATAL_CLOSES = { 4400: "close_4400", 4401: "close_4401", 4403: "close_4403" };
  const REGION_ORDER = ["north", "east", "south", "west"];
  const WAITING_STATES = new Set(["queued", "ringing_agent"]);
  const COLUMNS = ["caller", "region", "intent", "state", "wait", "agent", "verification"];
  const DASH = "—";

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("token-form"), token: $("token"), connect: $("connect"),
    disconnect: $("disconnect"), status: $("status"), lang: $("lang"),
    calls: $("calls"), noCalls: $("no-calls"), regions: $("regions"),
    route: $("route"), routeRegion: $("route-region"), routeAgent: $("route-agent"),
    routeDecision: $("route-decision"), transcript: $("transcript"),
    phone: $("phone"), monitorStatus: $("monitor-status"), via: $("monitor-via"),
    monitorButtons: [$("listen"), $("whisper"), $("barge")], monitorStop: $("monitor-stop"),
    monitorLevel: $("monitor-level"),
    health: $("health"), models: $("models"),
  };

  const state = {
    lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh",
    token: "",
    ws: null,
    wanted: false, // the supervisor asked to be connected (so closes are retried)
    retries: 0,
    retryTimer: null,
    settleTimer: null,
    status: { name: "idle", key: "status_idle", detail: "", vars: {} },
    epoch: null,
    lastSeq: null,
    calls: new Map(), // call_id -> board row
    removals: new Map(), // call_id -> timer of an ended row
    agents: [],
    waiting: [],
    selected: null,
    detail: null, // GET /calls/{id} of the selected call
    decision: null, // its last routing decision
    overflow: null, // regions it overflowed to
    lines: [], // finals of the selected call, in time order
    partials: new Map(), // speaker -> latest partial of the selected call
    loadGen: 0,
    loading: null, // { gen, buffered: [[kind, data]] } while earlier lines are fetched
    loadError: null,
    monitor: null, // { key, vars, raw, kind } of the last monitor request
    listening: null, // the browser monitor in progress (see listenInBrowser)
    health: null, // the last /ready body, or "unreachable"
    models: null, // GET /models (administrators only)
  };

  // -- text -------------------------------------------------------------------------------

  function label(key) {
    const pair = LABELS[key];
    return pair ? pair[LANGUAGES.indexOf(state.lang)] ?? pair[1] : undefined;
  }

  function t(key, vars) {
    const text = label(key) ?? String(key);
    return text.replace(/\{(\w+)\}/g, (_, name) => String(vars?.[name] ?? ""));
  }

  function known(prefix, value) {
    if (value === null || value === undefined || value === "") return DASH;
    return label(`${prefix}_${value}`) ?? String(value);
  }

  function regionLabel(region) {
    if (!region) return DASH;
    const name = label(`region_${region}`);
    return name ? `${name} (${region})` : region;
  }

  function parseTime(value) {
    if (!value) return null;
    // Stored times are UTC; read a time without an offset as UTC too, never as local time.
    const text = /([zZ]|[+-]\d\d:?\d\d)$/.test(value) ? value : `${value}Z`;
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? null : ms;
  }

  function mmss(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  }

  function offset(seconds) {
    const s = Math.max(0, Number(seconds) || 0);
    return `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
  }

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  // -- connection status ------------------------------------------------------------------

  function setStatus(name, key, vars, detail) {
    state.status = { name, key: key ?? `status_${name}`, vars: vars ?? {}, detail: detail ?? "" };
    renderStatus();
  }

  function renderStatus() {
    const { name, key, vars, detail } = state.status;
    ui.status.dataset.status = name;
    ui.status.textContent = detail ? `${t(key, vars)}: ${detail}` : t(key, vars);
    ui.disconnect.disabled = !state.wanted;
  }

  // -- live WebSocket ---------------------------------------------------------------------

  function liveUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/api/v1/live`;
  }

  function connect() {
    const token = ui.token.value.trim();
    if (!token) {
      setStatus("error", "token_missing");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    if (token !== state.token) {
      state.epoch = null; // another identity: start over from a snapshot
      state.lastSeq = null;
    }
    state.token = token;
    state.wanted = true;
    state.retries = 0;
    dropSocket();
    openSocket();
    updateMonitorButtons();
    loadModels();
  }

  function disconnect() {
    state.wanted = false;
    dropSocket();
    setStatus("disconnected");
  }

  function dropSocket() {
    clearTimeout(state.retryTimer);
    clearTimeout(state.settleTimer);
    const ws = state.ws;
    state.ws = null; // its close event is ignored from now on
    if (ws) ws.close(1000, "closed by the supervisor");
  }

  function openSocket() {
    clearTimeout(state.retryTimer);
    setStatus(state.retries ? "reconnecting" : "connecting",
      state.retries ? "status_connecting" : null);
    const ws = new WebSocket(liveUrl());
    state.ws = ws;
    ws.addEventListener("open", () => {
      if (ws !== state.ws) return;
      const hello = { type: "auth", token: state.token };
      const resuming = state.epoch !== null && state.lastSeq !== null;
      if (resuming) {
        hello.last_seq = state.lastSeq;
        hello.epoch = state.epoch;
        state.settleTimer = setTimeout(() => {
          if (ws === state.ws && ws.readyState === WebSocket.OPEN) markConnected();
        }, RESUME_SETTLE_MS);
      }
      ws.send(JSON.stringify(hello));
    });
    ws.addEventListener("message", (event) => {
      if (ws !== state.ws) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (state.status.name !== "connected") markConnected();
      if (message.type === "snapshot") onSnapshot(message);
      else if (message.type === "event") onEvent(message);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== state.ws) return;
      state.ws = null;
      clearTimeout(state.settleTimer);
      onClosed(event);
    });
  }

  function markConnected() {
    state.retries = 0;
    setStatus("connected");
  }

  function onClosed(event) {
    const fatal = FATAL_CLOSES[event.code];
    if (fatal) {
      // Retrying cannot help: the token or its role is wrong.
      state.wanted = false;
      setStatus("error", fatal, {}, event.reason);
      updateMonitorButtons();
      return;
    }
    if (!state.wanted) {
      setStatus("disconnected");
      return;
    }
    const delay = Math.min(RETRY_MAX_S, 2 ** state.retries);
    state.retries += 1;
    setStatus("reconnecting", null, { s: delay });
    state.retryTimer = setTimeout(openSocket, delay * 1000);
  }

  function onSnapshot(message) {
    state.epoch = message.epoch ?? null;
    state.lastSeq = typeof message.seq === "number" ? message.seq : null;
    const live = new Set();
    for (const row of message.calls ?? []) {
      live.add(row.call_id);
      upsertCall(row);
    }
    // Only active calls are in a snapshot: a row missing from it ended while we were away.
    for (const [callId, row] of state.calls) {
      if (!live.has(callId) && row.state !== "ended") {
        upsertCall({ ...row, state: "ended", ended_at: new Date().toISOString() });
      }
    }
    state.agents = message.agents ?? [];
    state.waiting = message.waiting ?? [];
    renderRegions();
    // Live events may have been lost before this snapshot: read the transcript again.
    if (state.selected) loadSelected();
  }

  function onEvent(message) {
    if (state.lastSeq !== null && message.seq <= state.lastSeq) return; // seen before a resume
    state.lastSeq = message.seq;
    const data = message.data ?? {};
    switch (message.kind) {
      case "call":
        onCallEvent(message.call_id, data);
        break;
      case "transcript.partial":
      case "transcript.final":
        onTranscript(message.kind, message.call_id, data);
        break;
      case "acd":
        state.agents = data.agents ?? [];
        state.waiting = data.waiting ?? [];
        renderRegions();
        break;
      default:
        break;
    }
  }

  function onCallEvent(callId, data) {
    if (data.call) upsertCall(data.call);
    if (callId !== state.selected) return;
    if (data.kind === "routed") state.decision = data.data ?? null;
    if (data.kind === "overflow") state.overflow = data.data?.regions ?? null;
    renderRoute();
  }

  // -- board ------------------------------------------------------------------------------

  function upsertCall(row) {
    const callId = row.call_id;
    if (!callId) return;
    state.calls.set(callId, row);
    let tr = ui.calls.querySelector(`tr[data-call-id="${CSS.escape(callId)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.callId = callId;
      tr.tabIndex = 0;
      for (const column of COLUMNS) tr.append(node("td", column));
      placeRow(tr, row);
    }
    fillRow(tr, row);
    const ended = row.state === "ended" || Boolean(row.ended_at);
    tr.classList.toggle("ended", ended);
    if (ended && !state.removals.has(callId)) {
      state.removals.set(callId, setTimeout(() => removeCall(callId), ENDED_LINGER_MS));
    }
    ui.noCalls.classList.toggle("hidden", state.calls.size > 0);
    if (state.waiting.some((w) => w.call_id === callId)) renderRegions();
    if (callId === state.selected) {
      renderRoute();
      updateMonitorButtons();
      if (ended) renderTranscript();
    }
  }

  function placeRow(tr, row) {
    // Oldest call first, so rows do not jump around while the supervisor reads them.
    const started = parseTime(row.started_at) ?? Infinity;
    for (const other of ui.calls.children) {
      const otherRow = state.calls.get(other.dataset.callId);
      if ((parseTime(otherRow?.started_at) ?? Infinity) > started) {
        ui.calls.insertBefore(tr, other);
        return;
      }
    }
    ui.calls.append(tr);
  }

  function fillRow(tr, row) {
    const values = {
      caller: [row.caller_number, row.caller_number || DASH],
      region: [row.region, regionLabel(row.region)],
      intent: [row.intent, known("intent", row.intent)],
      state: [row.state, known("state", row.state)],
      wait: [null, mmss(waitSeconds(row, Date.now()))],
      agent: [row.agent_id, row.agent_id || DASH],
      verification: [row.verification, known("verification", row.verification)],
    };
    for (const cell of tr.children) {
      const [raw, text] = values[cell.className];
      if (raw !== null && raw !== undefined) cell.dataset.value = raw;
      else delete cell.dataset.value;
      if (cell.textContent !== text) cell.textContent = text;
    }
    tr.classList.toggle("selected", row.call_id === state.selected);
    tr.setAttribute("aria-selected", String(row.call_id === state.selected));
  }

  function waitSeconds(row, now) {
    const waiting = WAITING_STATES.has(row.state);
    const from = parseTime(waiting && row.queued_at ? row.queued_at : row.started_at);
    if (from === null) return 0;
    const until = parseTime(row.ended_at) ?? now;
    return (until - from) / 1000;
  }

  function tickWaits() {
    const now = Date.now();
    for (const tr of ui.calls.children) {
      const row = state.calls.get(tr.dataset.callId);
      const cell = tr.querySelector("td.wait");
      if (row && cell) {
        const text = mmss(waitSeconds(row, now));
        if (cell.textContent !== text) cell.textContent = text;
      }
    }
  }

  function removeCall(callId) {
    state.removals.delete(callId);
    const row = state.calls.get(callId);
    if (row && row.state !== "ended" && !row.ended_at) return; // it came back (reconnect)
    state.calls.delete(callId);
    ui.calls.querySelector(`tr[data-call-id="${CSS.escape(callId)}"]`)?.remove();
    ui.noCalls.classList.toggle("hidden", state.calls.size > 0);
    if (callId === state.selected) {
      updateMonitorButtons();
      renderTranscript();
    }
  }

  function renderBoard() {
    for (const tr of ui.calls.children) {
      const row = state.calls.get(tr.dataset.callId);
      if (row) fillRow(tr, row);
    }
  }

  // -- agents and queues ------------------------------------------------------------------

  function renderRegions() {
    const byRegion = new Map();
    const entry = (region) => {
      if (!byRegion.has(region)) {
        byRegion.set(region, { registered: 0, available: 0, oncall: 0, waiting: 0, total: 0 });
      }
      return byRegion.get(region);
    };
    for (const agent of state.agents) {
      const counts = entry(agent.region);
      counts.total += 1;
      if (agent.registered) counts.registered += 1;
      if (agent.available) counts.available += 1;
      if (agent.call_id) counts.oncall += 1;
    }
    for (const waiting of state.waiting) {
      // Queue changes are not always sent as they happen: the board's own row of a call that
      // is no longer queued (connected, ended) wins over an older queue list.
      const row = state.calls.get(waiting.call_id);
      if (row && !WAITING_STATES.has(row.state)) continue;
      // A waiting call counts in the region it was routed to, even after it overflowed.
      entry(waiting.regions?.[0] ?? "any").waiting += 1;
    }
    const rank = (r) => (REGION_ORDER.includes(r) ? REGION_ORDER.indexOf(r) : 99);
    const regions = [...byRegion.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const rows = regions.map((region) => {
      const counts = byRegion.get(region);
      const tr = node("tr");
      tr.dataset.region = region;
      tr.append(node("td", "region", regionLabel(region)));
      const registered = node("td", "registered", `${counts.registered} / ${counts.total}`);
      tr.append(registered);
      for (const key of ["available", "oncall", "waiting"]) {
        tr.append(node("td", key, String(counts[key])));
      }
      return tr;
    });
    if (!rows.length) {
      const tr = node("tr");
      const td = node("td", "empty", t("no_agents"));
      td.colSpan = 5;
      tr.append(td);
      rows.push(tr);
    }
    ui.regions.replaceChildren(...rows);
  }

  // -- selected call: route and transcript ------------------------------------------------

  function select(callId) {
    if (callId === state.selected) return;
    state.selected = callId;
    if (!state.listening) state.monitor = null; // a monitor in progress keeps its status
    renderMonitor();
    renderBoard();
    loadSelected();
  }

  async function loadSelected() {
    const callId = state.selected;
    const gen = ++state.loadGen;
    state.loading = { gen, buffered: [] };
    state.lines = [];
    state.partials.clear();
    state.detail = null;
    state.decision = null;
    state.overflow = null;
    state.loadError = null;
    renderTranscript();
    renderRoute();
    updateMonitorButtons();
    const id = encodeURIComponent(callId);
    try {
      const [lines, detail] = await Promise.all([
        api(`/calls/${id}/transcript`), api(`/calls/${id}`)]);
      if (gen !== state.loadGen) return; // another call was selected meanwhile
      for (const line of lines) addFinal(line);
      state.detail = detail;
      state.decision = detail.route_decision ?? null;
      const overflow = [...(detail.events ?? [])].reverse().find((e) => e.kind === "overflow");
      state.overflow = overflow?.data?.regions ?? null;
    } catch (error) {
      if (gen !== state.loadGen) return;
      state.loadError = error.message;
    }
    const buffered = state.loading.buffered;
    state.loading = null;
    for (const [kind, data] of buffered) applyTranscript(kind, data);
    renderTranscript();
    renderRoute();
  }

  function onTranscript(kind, callId, data) {
    if (callId !== state.selected) return;
    if (state.loading && kind === "transcript.final") {
      state.loading.buffered.push([kind, data]); // merged once the earlier lines are in
      return;
    }
    applyTranscript(kind, data);
    renderTranscript();
  }

  function applyTranscript(kind, data) {
    if (kind === "transcript.partial") {
      state.partials.set(data.speaker, data);
      return;
    }
    state.partials.delete(data.speaker);
    addFinal(data);
  }

  function addFinal(line) {
    const start = Number(line.start_s) || 0;
    // The same utterance can come from the REST read and from a live event.
    const seen = state.lines.some((l) => l.speaker === line.speaker
      && Math.abs(l.start_s - start) < 0.01);
    if (seen) return;
    const entry = { speaker: line.speaker, start_s: start, text: line.text ?? "",
      dropped_reason: line.dropped_reason ?? null };
    const at = state.lines.findIndex((l) => l.start_s > start);
    if (at < 0) state.lines.push(entry);
    else state.lines.splice(at, 0, entry);
  }

  function lineNode(line, kind) {
    const div = node("div", `line ${kind}`);
    div.dataset.speaker = line.speaker;
    div.append(node("span", "at", offset(line.start_s)));
    div.append(node("span", "speaker", known("speaker", line.speaker)));
    const why = line.dropped_reason ? known("dropped", line.dropped_reason) : "";
    const text = line.text || `${t("not_recognised")}${why ? ` ${why}` : ""}`;
    if (!line.text) div.classList.add("dropped");
    div.append(node("span", "text", text));
    return div;
  }

  function renderTranscript() {
    const pane = ui.transcript;
    const nearBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
    const children = [];
    if (!state.selected) {
      children.push(node("p", "empty", t("select_call")));
    } else {
      if (state.loading) children.push(node("p", "note", t("loading")));
      if (state.loadError) {
        children.push(node("p", "note", t("load_failed", { message: state.loadError })));
      }
      for (const line of state.lines) children.push(lineNode(line, "final"));
      for (const partial of state.partials.values()) {
        children.push(lineNode(partial, "partial"));
      }
      if (!state.loading && !state.lines.length && !state.partials.size) {
        children.push(node("p", "note", t("no_lines")));
      }
      const row = state.calls.get(state.selected);
      if (!row || row.state === "ended") children.push(node("p", "note", t("call_ended")));
    }
    pane.replaceChildren(...children);
    if (nearBottom) pane.scrollTop = pane.scrollHeight;
  }

  function renderRoute() {
    const row = state.calls.get(state.selected);
    const detail = state.detail;
    const region = row?.route_region ?? detail?.route?.region ?? null;
    const agent = row?.agent_id ?? detail?.route?.agent_id ?? null;
    ui.route.dataset.callId = state.selected ?? "";
    ui.routeRegion.textContent = state.selected ? regionLabel(region) : DASH;
    ui.routeAgent.textContent = state.selected && agent ? agent : DASH;
    ui.routeDecision.textContent = state.selected ? describeDecision(state.decision) : DASH;
  }

  function describeDecision(decision) {
    if (!decision) return DASH;
    const parts = [`${known("action", decision.action)} → ${regionLabel(decision.region)}`];
    if (decision.rule_name || decision.rule_id) {
      parts.push(`${t("rule")} ${decision.rule_name || decision.rule_id}`);
    }
    if (decision.overflow_regions?.length) {
      const after = decision.overflow_after_s != null ? ` (${decision.overflow_after_s} s)` : "";
      parts.push(`${t("overflow_to")} ${decision.overflow_regions.map(regionLabel).join(", ")}`
        + after);
    }
    if (state.overflow?.length) {
      parts.push(`${t("overflowed")} ${state.overflow.map(regionLabel).join(", ")}`);
    }
    if (decision.reason) parts.push(reasonText(decision.reason));
    return parts.join(" · ");
  }

  // The rules' reason is notes joined by "; " ("rule 'x' matched; open"); the words the
  // console knows are shown in the page's language, the rest as the server wrote them.
  function reasonText(reason) {
    return reason.split("; ").map((note) => {
      if (note === "open") return t("reason_open");
      if (note.startsWith("closed")) return `${t("reason_closed")} ${note.slice(6).trim()}`;
      return note;
    }).join("; ");
  }

  // -- service health (public /ready) -----------------------------------------------------

  async function pollHealth() {
    try {
      const response = await fetch("/api/v1/ready", { headers: { Accept: "application/json" } });
      state.health = await response.json();
    } catch {
      state.health = "unreachable";
    }
    renderHealth();
  }

  function renderHealth() {
    const health = state.health;
    if (health === null) return;
    const problems = [];
    if (health === "unreachable") {
      problems.push(t("health_unreachable"));
    } else {
      const reasons = health.reasons ?? {};
      for (const name of health.missing ?? []) problems.push(partText(name, reasons[name]));
      for (const [name, reason] of Object.entries(health.degraded ?? {})) {
        problems.push(partText(name, reason));
      }
    }
    ui.health.hidden = problems.length === 0;
    ui.health.replaceChildren(node("strong", "", t("health_problems")),
      ...problems.map((text) => node("span", "problem", text)));
  }

  // Administrators (and only they: the endpoint says 403 to others) see the models in use.
  async function loadModels() {
    state.models = null;
    try {
      state.models = await api("/models");
    } catch {
      state.models = null; // not an administrator's token, or the service is unreachable
    }
    renderModels();
  }

  function renderModels() {
    const models = state.models;
    const parts = models ? Object.entries(models) : [];
    ui.models.hidden = parts.length === 0;
    ui.models.replaceChildren(node("strong", "", t("models")), ...parts.map(([part, info]) => {
      const item = node("span", info.test_model ? "model test" : "model",
        `${label(`model_${part}`) ?? part}: ${info.name} (${info.device})`);
      item.dataset.part = part;
      if (info.test_model) item.append(node("em", "", ` — ${t("model_test")}`));
      return item;
    }));
  }

  function partText(name, reason) {
    const known_ = label(`part_${name}`);
    const head = known_ ?? name;
    return reason ? `${head} (${reason})` : head;
  }

  // -- REST -------------------------------------------------------------------------------

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(`/api/v1${path}`, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      throw new Error(body?.message || `HTTP ${response.status} ${response.statusText}`);
    }
    return body;
  }

  // -- listen / whisper / barge -----------------------------------------------------------

  function updateMonitorButtons() {
    const row = state.calls.get(state.selected);
    const live = Boolean(state.token && row && row.state !== "ended" && !row.ended_at);
    for (const button of ui.monitorButtons) button.disabled = !live;
    ui.monitorStop.disabled = !state.listening;
    ui.monitorLevel.hidden = !state.listening;
    ui.phone.disabled = ui.via.value !== "phone";
  }

  function monitor(mode) {
    if (!state.selected) {
      showMonitor({ key: "select_first", kind: "error" });
      return;
    }
    if (ui.via.value === "phone") ringMyPhone(mode);
    else listenInBrowser(mode);
  }

  async function ringMyPhone(mode) {
    const callId = state.selected;
    const phone = ui.phone.value.trim();
    if (!phone || !ui.phone.checkValidity()) {
      showMonitor({ key: "phone_needed", kind: "error" });
      return;
    }
    localStorage.setItem(PHONE_KEY, phone);
    showMonitor({ key: "monitor_sending", vars: { mode }, kind: "" });
    try {
      const started = await api(`/calls/${encodeURIComponent(callId)}/monitor`, {
        method: "POST", body: JSON.stringify({ mode, phone }) });
      if (callId === state.selected) {
        showMonitor({ key: "monitor_ringing", vars: { mode, phone: started?.phone ?? phone },
          kind: "ok" });
      }
    } catch (error) {
      if (callId === state.selected) showMonitor({ raw: error.message, kind: "error" });
    }
  }

  // In the browser: the call's audio over /api/v1/calls/{id}/listen into an AudioWorklet, and
  // for whisper and barge the microphone back the same way (8 kHz 16-bit PCM both ways).

  function listenUrl(callId) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/api/v1/calls/${encodeURIComponent(callId)}/listen`;
  }

  async function listenInBrowser(mode) {
    const callId = state.selected;
    if (state.listening) endListening(state.listening, null); // one monitor at a time
    const session = { callId, mode, ws: null, ctx: null, node: null, mic: null,
      started: false, ended: false, level: 0, heard: 0, played: 0 };
    state.listening = session;
    updateMonitorButtons();
    showMonitor({ key: "monitor_sending", vars: { mode }, kind: "" });
    try {
      // Made inside the click, so the browser lets it play; it runs at the socket's rate.
      const ctx = new AudioContext({ sampleRate: MONITOR_RATE, latencyHint: "interactive" });
      session.ctx = ctx;
      await ctx.audioWorklet.addModule("/console/monitor-worklet.js");
      const worklet = new AudioWorkletNode(ctx, "ivr-monitor", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
      worklet.port.onmessage = (event) => fromWorklet(session, event.data);
      worklet.connect(ctx.destination);
      session.node = worklet;
      if (mode !== "listen") {
        // Echo cancellation keeps the call's own audio (played to the supervisor) out of
        // the microphone. The browser's noise suppression and gain control are off: they
        // fade out anything steady within a second or two, and contact-centre headsets
        // suppress noise themselves.
        session.mic = await navigator.mediaDevices.getUserMedia({ audio: {
          channelCount: 1, echoCancellation: false, noiseSuppression: false,
          autoGainControl: false } });
        ctx.createMediaStreamSource(session.mic).connect(worklet);
      }
      await ctx.resume();
    } catch (error) {
      const key = mode !== "listen" && !session.mic && session.node ? "mic_failed" : "audio_failed";
      endListening(session, { key, vars: { reason: error.message }, kind: "error" });
      return;
    }
    if (session.ended) return; // stopped or replaced while the audio was being set up
    const ws = new WebSocket(listenUrl(callId));
    ws.binaryType = "arraybuffer";
    session.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "auth", token: state.token, mode }));
    });
    ws.addEventListener("message", (event) => onListenMessage(session, event.data));
    ws.addEventListener("close", (event) => endListening(session, closedMonitor(event)));
  }

  function onListenMessage(session, data) {
    if (session.ended) return;
    if (typeof data === "string") {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        return;
      }
      if (message.type === "started") {
        session.started = true;
        showMonitor({ key: "monitor_browser", kind: "ok",
          vars: { mode: session.mode, target: message.target } });
      } else if (message.type === "error") {
        showMonitor({ key: "listen_no_audio", kind: "error" });
      }
      return;
    }
    const pcm = new Int16Array(data);
    const samples = new Float32Array(pcm.length);
    let energy = 0;
    for (let i = 0; i < pcm.length; i += 1) {
      samples[i] = pcm[i] / 32768;
      energy += samples[i] * samples[i];
    }
    session.node.port.postMessage(samples, [samples.buffer]);
    session.heard += pcm.length;
    session.level = 0.8 * session.level + 0.2 * Math.sqrt(energy / Math.max(1, pcm.length));
  }

  function fromWorklet(session, message) {
    if (session.ended) return;
    if (message.type === "mic") {
      const ws = session.ws;
      if (!session.started || session.mode === "listen" || ws?.readyState !== WebSocket.OPEN) {
        return;
      }
      const pcm = new Int16Array(message.samples.length);
      for (let i = 0; i < pcm.length; i += 1) {
        pcm[i] = Math.max(-32768, Math.min(32767, Math.round(message.samples[i] * 32767)));
      }
      ws.send(pcm.buffer);
    } else if (message.type === "stats") {
      session.played = message.played;
      ui.monitorLevel.value = Math.min(1, session.level * 4);
      ui.monitorLevel.dataset.heard = String(session.heard);
      ui.monitorLevel.dataset.played = String(session.played);
    }
  }

  function closedMonitor(event) {
    if (event.code === 1000 && event.reason === "call ended") return { key: "monitor_ended" };
    if (event.code === 1000) return { key: "monitor_stopped" };
    const key = MONITOR_CLOSES[event.code];
    if (key) return { key, kind: "error" };
    if (event.code >= 4000 && event.reason) return { raw: event.reason, kind: "error" };
    return { key: "monitor_lost", vars: { code: event.code }, kind: "error" };
  }

  function stopListening() {
    const session = state.listening;
    if (!session) return;
    if (session.ws?.readyState === WebSocket.OPEN) {
      session.ws.send(JSON.stringify({ type: "stop" })); // the server closes: "stopped"
    } else {
      endListening(session, { key: "monitor_stopped" });
    }
  }

  function endListening(session, message) {
    if (session.ended) return;
    session.ended = true;
    if (session.ws && session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000);
    for (const track of session.mic?.getTracks() ?? []) track.stop();
    session.ctx?.close().catch(() => {});
    if (state.listening !== session) return;
    state.listening = null;
    updateMonitorButtons();
    if (message) showMonitor(message);
  }

  function showMonitor(message) {
    state.monitor = message;
    renderMonitor();
  }

  function renderMonitor() {
    const message = state.monitor;
    ui.monitorStatus.className = message?.kind ?? "";
    if (!message) {
      ui.monitorStatus.textContent = "";
    } else if (message.raw !== undefined) {
      ui.monitorStatus.textContent = message.raw;
    } else {
      const vars = { ...message.vars };
      if (vars.mode) vars.mode = t(vars.mode);
      if (vars.target) vars.target = t(`target_${vars.target}`);
      ui.monitorStatus.textContent = t(message.key, vars);
    }
  }

  // -- language ---------------------------------------------------------------------------

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    for (const element of document.querySelectorAll("[data-i18n]")) {
      element.textContent = t(element.dataset.i18n);
    }
    for (const element of document.querySelectorAll("[data-i18n-placeholder]")) {
      element.placeholder = t(element.dataset.i18nPlaceholder);
    }
    for (const element of document.querySelectorAll("[data-i18n-title]")) {
      element.title = t(element.dataset.i18nTitle);
    }
    document.title = t("title");
    // The button names the other language, in that language.
    ui.lang.textContent = state.lang === "zh" ? "English" : "中文";
    ui.lang.lang = state.lang === "zh" ? "en" : "zh-CN";
    renderStatus();
    renderBoard();
    renderRegions();
    renderRoute();
    renderTranscript();
    renderMonitor();
    renderHealth();
    renderModels();
  }

  // -- wiring -----------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  ui.disconnect.addEventListener("click", disconnect);
  ui.lang.addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, state.lang);
    applyLanguage();
  });
  ui.calls.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-call-id]");
    if (tr) select(tr.dataset.callId);
  });
  ui.calls.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr[data-call-id]");
    if (tr && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      select(tr.dataset.callId);
    }
  });
  for (const button of ui.monitorButtons) {
    button.addEventListener("click", () => monitor(button.dataset.mode));
  }
  ui.monitorStop.addEventListener("click", stopListening);
  ui.phone.addEventListener("change", () => {
    if (ui.phone.checkValidity()) localStorage.setItem(PHONE_KEY, ui.phone.value.trim());
  });
  ui.via.addEventListener("change", () => {
    localStorage.setItem(VIA_KEY, ui.via.value);
    updateMonitorButtons();
  });
  window.addEventListener("pagehide", () => {
    state.wanted = false;
    dropSocket();
    if (state.listening) endListening(state.listening, null);
  });
  window.addEventListener("pageshow", (event) => {
    // Back from the back/forward cache: the socket was closed on the way out.
    if (event.persisted && state.token) connect();
  });

  ui.phone.value = localStorage.getItem(PHONE_KEY) ?? "";
  ui.via.value = localStorage.getItem(VIA_KEY) === "phone" ? "phone" : "browser";
  updateMonitorButtons();
  applyLanguage();
  setInterval(tickWaits, 1000);
  pollHealth();
  setInterval(pollHealth, 5000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    ui.token.value = saved;
    connect();
  }
})();
