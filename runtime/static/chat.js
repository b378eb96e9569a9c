// ClosedMesh chat page: a model picker fed by GET /v1/models and streamed answers from
// POST /v1/chat/completions (SSE). Plain JS, no dependencies. Model output is only ever inserted as
// text (text nodes / textContent), never parsed as HTML.
//
// Against an entry node (docs/entry.md) the model list is open and answers need an API key: the page
// asks for one when an answer is refused with 401, keeps it in this browser's localStorage and sends it
// as an Authorization header on its own requests, which all go to this page's origin (apiFetch takes
// paths only). A local node never answers 401, so no key is ever asked for there.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"),
    refresh: $("refresh-models"),
    newChat: $("new-chat"),
    banner: $("banner"),
    conversation: $("conversation"),
    empty: $("empty-state"),
    form: $("composer"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
    forgetKey: $("forget-key"),
    keyPanel: $("key-panel"),
    keyReason: $("key-reason"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyCancel: $("key-cancel"),
  };

  const STORAGE_KEY = "closedmesh.chat.model";
  const API_KEY_STORAGE = "closedmesh.chat.apiKey";
  const history = []; // the turns sent with every request: {role, content}
  let models = [];
  let loadingModels = false;
  let controller = null; // AbortController of the answer being streamed, null when idle
  let retryBubble = null; // the failed answer that offers "Retry"

  class ChatError extends Error {}

  const unreachable = () =>
    `The node is not reachable at ${location.origin}. Check that ClosedMesh is running ` +
    "(closedmesh serve), then try again.";

  // -- small helpers ------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(text) {
    els.status.textContent = text;
  }

  function showBanner(text) {
    els.banner.textContent = text;
    els.banner.hidden = false;
  }

  function hideBanner() {
    els.banner.hidden = true;
    els.banner.textContent = "";
  }

  function remember(id) {
    try {
      localStorage.setItem(STORAGE_KEY, id);
    } catch (_) {
      /* storage may be unavailable; the choice is simply not remembered */
    }
  }

  function remembered() {
    try {
      return localStorage.getItem(STORAGE_KEY) || "";
    } catch (_) {
      return "";
    }
  }

  // -- API key (entry nodes) ----------------------------------------------------------------------

  function storedKey() {
    try {
      return localStorage.getItem(API_KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function storeKey(key) {
    try {
      if (key) localStorage.setItem(API_KEY_STORAGE, key);
      else localStorage.removeItem(API_KEY_STORAGE);
    } catch (_) {
      /* storage unavailable: the key lasts as long as this page */
    }
    sessionKey = key;
    els.forgetKey.hidden = !key;
  }

  let sessionKey = storedKey();

  // Every request of this page goes through here: a path on this page's own origin, never a URL, so the
  // key cannot be sent anywhere else.
  function apiFetch(path, options = {}) {
    if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//")) {
      throw new ChatError(`Refusing to send a request to ${path}: this page talks only to its own node.`);
    }
    const headers = new Headers(options.headers || {});
    if (sessionKey) headers.set("Authorization", `Bearer ${sessionKey}`);
    return fetch(path, { ...options, headers, credentials: "omit", mode: "same-origin" });
  }

  function askForKey(reason) {
    els.keyReason.textContent = reason;
    els.keyPanel.hidden = false;
    els.keyInput.value = "";
    els.keyInput.focus();
  }

  function hideKeyPanel() {
    els.keyPanel.hidden = true;
    els.keyReason.textContent = "";
    els.keyInput.value = "";
  }

  async function errorFromResponse(resp) {
    let message = "";
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        message = body && body.error && body.error.message ? String(body.error.message) : "";
      } catch (_) {
        message = text.trim().slice(0, 500);
      }
    } catch (_) {
      /* no body */
    }
    return new ChatError(message || `The node answered HTTP ${resp.status} ${resp.statusText}`.trim() + ".");
  }

  // -- models -------------------------------------------------------------------------------------

  function modelLabel(m) {
    const cm = (m && m.closedmesh) || {};
    const peers = Number.isInteger(cm.peers) ? cm.peers : 0;
    const peerText = peers > 0 ? ` (${peers} ${peers === 1 ? "peer" : "peers"})` : "";
    let where;
    switch (cm.served_by) {
      case "local":
        where = "local";
        break;
      case "mesh":
        where = `mesh${peerText}`;
        break;
      case "local+mesh":
        where = `local + mesh${peerText}`;
        break;
      default:
        where = cm.served_by ? String(cm.served_by) : "";
    }
    let label = where ? `${m.id} · ${where}` : String(m.id);
    if (cm.state && cm.state !== "ready") label += ` (${cm.state})`;
    return label;
  }

  function fillModels(list) {
    const wanted = els.model.value || remembered();
    els.model.replaceChildren();
    if (list.length === 0) {
      els.model.append(new Option("No models available", ""));
      return;
    }
    for (const m of list) els.model.append(new Option(modelLabel(m), String(m.id)));
    const ids = list.map((m) => String(m.id));
    const ready = list.find((m) => !m.closedmesh || !m.closedmesh.state || m.closedmesh.state === "ready");
    els.model.value = ids.includes(wanted) ? wanted : String((ready || list[0]).id);
  }

  async function loadModels() {
    if (loadingModels) return;
    loadingModels = true;
    els.refresh.disabled = true;
    try {
      let resp;
      try {
        resp = await apiFetch("/v1/models", { headers: { Accept: "application/json" }, cache: "no-store" });
      } catch (_) {
        throw new ChatError(unreachable());
      }
      if (resp.status === 401) {
        // An entry's model list is open; a node that keeps even its list behind a key asks here.
        const refused = await errorFromResponse(resp);
        askForKey(`${refused.message} Enter your key to see the models.`);
        throw refused;
      }
      if (!resp.ok) throw await errorFromResponse(resp);
      const body = await resp.json();
      models = Array.isArray(body && body.data) ? body.data.filter((m) => m && m.id !== undefined) : [];
      fillModels(models);
      if (models.length === 0) showBanner("This node serves no models right now. Load or pull one, then refresh the list.");
      else hideBanner();
    } catch (e) {
      models = [];
      fillModels(models);
      showBanner(`Could not load the model list. ${e instanceof ChatError ? e.message : unreachable()}`);
    } finally {
      loadingModels = false;
      updateControls();
    }
  }

  // -- conversation view --------------------------------------------------------------------------

  function nearBottom() {
    const c = els.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 48;
  }

  function scrollToBottom() {
    els.conversation.scrollTop = els.conversation.scrollHeight;
  }

  function addMessage(role, text, who) {
    els.empty.hidden = true;
    const article = el("article", `message ${role}`);
    const header = el("h3", "message-role", role === "user" ? "You" : who || "Assistant");
    const body = el("div", "message-body");
    const textNode = document.createTextNode(text);
    body.append(textNode);
    article.append(header, body);
    els.conversation.append(article);
    scrollToBottom();
    return {
      article,
      body,
      append(delta) {
        const stick = nearBottom();
        textNode.appendData(delta); // text only: never parsed as HTML
        if (stick) scrollToBottom();
      },
      note(text, kind) {
        const stick = nearBottom();
        const p = el("p", `message-note${kind ? " " + kind : ""}`, text);
        article.append(p);
        if (stick) scrollToBottom();
        return p;
      },
    };
  }

  function clearRetry() {
    if (retryBubble) {
      const button = retryBubble.article.querySelector(".retry");
      if (button) button.remove();
      retryBubble = null;
    }
  }

  function updateControls() {
    const busy = controller !== null;
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.stop.disabled = !busy;
    els.send.disabled = busy || !els.model.value;
    els.model.disabled = busy || models.length === 0;
    els.refresh.disabled = busy || loadingModels;
    document.body.classList.toggle("busy", busy);
  }

  function autosize() {
    const p = els.prompt;
    p.style.height = "auto";
    p.style.height = Math.min(p.scrollHeight + 2, 220) + "px";
  }

  // -- streaming ----------------------------------------------------------------------------------

  // Reads an OpenAI-style SSE stream. Calls onDelta(text) for each piece of the first choice's content.
  // Returns the finish_reason. Throws ChatError for an error event, a malformed event, a lost
  // connection, or a stream that ends without [DONE]; rethrows AbortError when stopped.
  async function readStream(resp, onDelta) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    let finish = null;
    let done = false;

    const dispatch = () => {
      if (data.length === 0) return;
      const payload = data.join("\n");
      data = [];
      if (payload === "[DONE]") {
        done = true;
        return;
      }
      let obj;
      try {
        obj = JSON.parse(payload);
      } catch (_) {
        throw new ChatError("The node sent a stream event this page could not read; the answer is incomplete.");
      }
      if (obj && obj.error) {
        const msg = typeof obj.error === "object" ? obj.error.message : String(obj.error);
        throw new ChatError(msg || "The node reported an error in the middle of the answer.");
      }
      for (const choice of (obj && obj.choices) || []) {
        if (choice.index) continue; // only the first choice is shown
        const content = choice.delta && choice.delta.content;
        if (typeof content === "string" && content) onDelta(content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    };

    const line = (text) => {
      if (text === "") return dispatch();
      if (text.startsWith(":")) return; // comment, e.g. ": keep-alive"
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
    };

    while (!done) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (e && e.name === "AbortError") throw e;
        throw new ChatError("The connection to the node was lost in the middle of the answer; it is incomplete.");
      }
      if (chunk.done) {
        buffer += decoder.decode();
        break;
      }
      buffer += decoder.decode(chunk.value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const l of lines) {
        line(l);
        if (done) break;
      }
    }
    if (!done) {
      // Be lenient about a last event without its blank line (it may carry the error).
      if (buffer) line(buffer);
      dispatch();
    }
    if (!done) {
      throw new ChatError("The answer ended before the node said it was complete (the stream closed early); " +
        "it may be cut off.");
    }
    reader.cancel().catch(() => {});
    return finish;
  }

  async function ask() {
    const model = els.model.value;
    const bubble = addMessage("assistant", "", model);
    bubble.article.setAttribute("aria-busy", "true");
    bubble.article.classList.add("pending");
    const ctrl = new AbortController();
    controller = ctrl;
    const sendHadFocus = document.activeElement === els.send;
    updateControls();
    if (sendHadFocus) els.stop.focus();
    setStatus("Generating…");

    let text = "";
    let finish = null;
    let failure = null;
    let stopped = false;
    let needsKey = false;
    try {
      let resp;
      try {
        resp = await apiFetch("/v1/chat/completions", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
          body: JSON.stringify({ model, messages: history.slice(), stream: true }),
          signal: ctrl.signal,
          cache: "no-store",
        });
      } catch (e) {
        if (ctrl.signal.aborted) throw e;
        throw new ChatError(unreachable());
      }
      if (resp.status === 401) {
        const refused = await errorFromResponse(resp);
        needsKey = true;
        askForKey(
          sessionKey
            ? `The saved key was refused: ${refused.message} Enter another key to continue.`
            : `${refused.message} Enter your key to continue; your message is sent again with it.`,
        );
        throw refused;
      }
      if (!resp.ok) throw await errorFromResponse(resp);
      if (!resp.body) throw new ChatError("The node's answer had no body.");
      finish = await readStream(resp, (delta) => {
        if (!text) bubble.article.classList.remove("pending");
        text += delta;
        bubble.append(delta);
      });
    } catch (e) {
      if (ctrl.signal.aborted || (e && e.name === "AbortError")) stopped = true;
      else failure = e instanceof ChatError ? e.message : `Something went wrong in this page: ${e}`;
    } finally {
      if (controller === ctrl) controller = null;
      bubble.article.classList.remove("pending");
      bubble.article.removeAttribute("aria-busy");
    }

    if (failure) {
      bubble.article.classList.add("failed");
      const note = bubble.note(`Error: ${failure}`, "error");
      note.setAttribute("role", "alert");
      const retry = el("button", "retry secondary", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => {
        if (controller) return;
        bubble.article.remove();
        retryBubble = null;
        ask();
      });
      bubble.article.append(retry);
      retryBubble = bubble;
      setStatus(needsKey ? "Waiting for an API key." : "The answer failed.");
    } else if (stopped) {
      bubble.article.classList.add("stopped");
      if (text) history.push({ role: "assistant", content: text });
      bubble.note(text ? "Stopped." : "Stopped before any text arrived.", "muted");
      setStatus("Stopped.");
    } else {
      history.push({ role: "assistant", content: text });
      if (!text) bubble.note("The model gave an empty answer.", "muted");
      if (finish === "length") bubble.note("The answer was cut off at its length limit.", "muted");
      setStatus("Answer complete.");
    }
    const stopHadFocus = document.activeElement === els.stop || document.activeElement === document.body;
    updateControls();
    if (stopHadFocus) els.prompt.focus();
  }

  function send() {
    if (controller) return;
    const text = els.prompt.value;
    if (!text.trim()) {
      els.prompt.focus();
      return;
    }
    if (!els.model.value) {
      showBanner("Pick a model first (refresh the list if it is empty).");
      return;
    }
    els.prompt.value = "";
    autosize();
    clearRetry();
    history.push({ role: "user", content: text });
    addMessage("user", text);
    ask();
  }

  function stop() {
    if (controller) controller.abort();
  }

  function retryFailed() {
    const button = retryBubble && retryBubble.article.querySelector(".retry");
    if (button && !controller) button.click();
  }

  function saveKey() {
    const key = els.keyInput.value.trim();
    if (!key) {
      els.keyInput.focus();
      return;
    }
    storeKey(key);
    hideKeyPanel();
    setStatus("Key saved in this browser.");
    if (models.length === 0) loadModels();
    retryFailed(); // the message that was refused goes again, with the key
  }

  function forgetKey() {
    storeKey("");
    hideKeyPanel();
    setStatus("Key forgotten: it is no longer stored in this browser.");
    els.prompt.focus();
  }

  function newChat() {
    stop();
    history.length = 0;
    retryBubble = null;
    for (const m of els.conversation.querySelectorAll(".message")) m.remove();
    els.empty.hidden = false;
    setStatus("");
    els.prompt.focus();
  }

  // -- wiring -------------------------------------------------------------------------------------

  els.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  els.prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    } else if (ev.key === "Escape" && controller) {
      stop();
    }
  });
  els.prompt.addEventListener("input", autosize);
  els.stop.addEventListener("click", stop);
  els.newChat.addEventListener("click", newChat);
  els.refresh.addEventListener("click", loadModels);
  els.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveKey();
  });
  els.keyCancel.addEventListener("click", () => {
    hideKeyPanel();
    els.prompt.focus();
  });
  els.forgetKey.addEventListener("click", forgetKey);
  els.model.addEventListener("change", () => {
    remember(els.model.value);
    updateControls();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !controller) loadModels();
  });

  els.forgetKey.hidden = !sessionKey;
  updateControls();
  loadModels();
  els.prompt.focus();
})();
